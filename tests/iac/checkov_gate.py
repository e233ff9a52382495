#!/usr/bin/env python3
"""Run checkov on one directory and fail on anything it does not pass cleanly.

checkov exits 0 when a file does not parse (it only prints "Parsing errors: N"),
and a directory it could not read at all also "passes" with zero checks. This
gate fails on failed checks, on parsing errors and on an empty scan, and prints
one summary line: `checkov <framework>: passed=N failed=N skipped=N parse_errors=N`.

usage: checkov_gate.py CHECKOV_BIN FRAMEWORK DIRECTORY
"""

from __future__ import annotations

import re
import subprocess
import sys

SUMMARY = re.compile(
    r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)(?:, Parsing errors: (\d+))?"
)


def run(checkov: str, framework: str, directory: str) -> tuple[int, dict[str, int], str]:
    proc = subprocess.run(
        [checkov, "-d", directory, "--framework", framework, "--skip-download", "--compact", "--quiet"],
        capture_output=True,
        text=True,
    )
    out = proc.stdout + proc.stderr
    counts = {"passed": 0, "failed": 0, "skipped": 0, "parse_errors": 0}
    for m in SUMMARY.finditer(out):
        counts["passed"] += int(m.group(1))
        counts["failed"] += int(m.group(2))
        counts["skipped"] += int(m.group(3))
        counts["parse_errors"] += int(m.group(4) or 0)
    if "Parsing errors" in out and counts["parse_errors"] == 0:
        counts["parse_errors"] = 1
    ok = (
        proc.returncode == 0
        and counts["failed"] == 0
        and counts["parse_errors"] == 0
        and "Parsing errors" not in out
        and counts["passed"] > 0
    )
    return (0 if ok else 1), counts, out


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    rc, counts, out = run(argv[1], argv[2], argv[3])
    if rc != 0:
        sys.stdout.write(out)
        if counts["passed"] == 0:
            print(f"checkov {argv[2]}: nothing was scanned in {argv[3]}")
    print(
        f"checkov {argv[2]}: passed={counts['passed']} failed={counts['failed']} "
        f"skipped={counts['skipped']} parse_errors={counts['parse_errors']}"
        + ("" if rc == 0 else "  <-- FAILED")
    )
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
