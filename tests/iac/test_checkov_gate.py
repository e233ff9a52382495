"""The checkov gate used by .ci/iac.sh must fail where checkov itself would not."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

import checkov_gate
import iac_rules as r

CHECKOV = Path(os.environ.get("CHECKOV_BIN", r.REPO / ".venv-iac" / "checkov" / "bin" / "checkov"))

pytestmark = pytest.mark.skipif(not CHECKOV.exists(), reason=f"checkov not installed at {CHECKOV} (run .ci/iac.sh)")


def test_bicep_parse_error_fails_gate(tmp_path):
    d = tmp_path / "bicep"
    d.mkdir()
    (d / "main.bicep").write_text(r.BICEP_FLEX.read_text().replace("resource plan ", "resource plan = ", 1))
    rc, counts, out = checkov_gate.run(str(CHECKOV), "bicep", str(d))
    assert "Parsing errors" in out
    assert rc != 0


def test_removed_suppression_fails_gate(tmp_path):
    d = tmp_path / "terraform"
    shutil.copytree(r.REPO / "terraform", d)
    main = d / "modules" / "bitnet-lambda" / "main.tf"
    main.write_text(re.sub(r"^\s*#checkov:skip=CKV_AWS_117:.*\n", "", main.read_text(), flags=re.M))
    rc, counts, _ = checkov_gate.run(str(CHECKOV), "terraform", str(d))
    assert counts["failed"] >= 1
    assert rc != 0


def test_empty_directory_fails_gate(tmp_path):
    rc, counts, _ = checkov_gate.run(str(CHECKOV), "terraform", str(tmp_path))
    assert rc != 0
