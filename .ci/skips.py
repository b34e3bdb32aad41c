"""Fail CI when a test it must run was skipped: every skip in the JUnit files given must match
one of .ci/allowed_skips (regular expressions, one a line): the skips that depend on the machine
CI runs on, not on what it installed. A skip for a missing dev dependency, detector package, the
shapes world or the JUnit schema is a failure here.

    python .ci/skips.py junit.xml [junit-slow.xml ...]
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ALLOWED = [re.compile(line) for line in
           (Path(__file__).parent / "allowed_skips").read_text(encoding="utf-8").splitlines()
           if line.strip() and not line.startswith("#")]


def unexpected(junit: Path) -> list[str]:
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for skipped in case.findall("skipped"):
            reason = skipped.get("message") or skipped.text or ""
            if not any(pattern.search(reason) for pattern in ALLOWED):
                out.append(f"{case.get('classname')}::{case.get('name')}: {reason}")
    return out


def main(paths: list[str]) -> int:
    found = [line for path in paths for line in unexpected(Path(path))]
    for line in found:
        print(f"skipped, and CI must run it: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
