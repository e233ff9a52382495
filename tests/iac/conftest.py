"""tests/iac run from .ci/iac.sh in its own venv (.venv-iac/test).

When another suite collects tests/ with an interpreter that lacks python-hcl2 >= 8,
pycep or PyYAML, these tests are left out instead of erroring; .ci/iac.sh sets
IAC_REQUIRED=1 so that there a missing tool fails loudly.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _tools_missing() -> str | None:
    try:
        import hcl2

        if not hasattr(hcl2, "SerializationOptions"):
            return "hcl2 is not python-hcl2 >= 8 (checkov's bc-python-hcl2?)"
        import pycep  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as e:
        return str(e)
    return None


_missing = _tools_missing()
if _missing:
    if os.environ.get("IAC_REQUIRED") == "1":
        raise RuntimeError(f"tests/iac need python-hcl2 >= 8, pycep-parser and PyYAML: {_missing}")
    collect_ignore_glob = ["test_*.py"]
    print(f"tests/iac skipped ({_missing}); run .ci/iac.sh", file=sys.stderr)
