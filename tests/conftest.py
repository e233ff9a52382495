"""Shared pytest setup for tests/ (reference implementation + engine parity)."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REF = HERE / "reference"
if str(REF) not in sys.path:
    sys.path.insert(0, str(REF))



def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print the lines tests appended to criteria.REPORT_LINES (visible without -s)."""
    crit = sys.modules.get("criteria")
    REPORT_LINES = getattr(crit, "REPORT_LINES", None)
    if REPORT_LINES:
        terminalreporter.section("BitNet reference parity report")
        for line in REPORT_LINES:
            terminalreporter.write_line(line)
