"""Sums pytest's ``--durations`` report per test file: ``python tools/durations_by_file.py < pytest.log``.

Reads the lines ``12.34s call     tests/test_x.py::test_y[...]`` (setup/call/teardown) that
``pytest --durations=0`` prints, and prints one line per file, slowest first."""

from __future__ import annotations

import re
import sys
from collections import defaultdict

LINE = re.compile(r"^\s*([0-9.]+)s\s+(setup|call|teardown)\s+([^:\s]+)::")


def main() -> None:
    per_file: dict[str, float] = defaultdict(float)
    for line in sys.stdin:
        m = LINE.match(line)
        if m:
            per_file[m.group(3)] += float(m.group(1))
    total = sum(per_file.values())
    for name, seconds in sorted(per_file.items(), key=lambda kv: -kv[1]):
        print(f"{seconds:8.1f} s  {name}")
    print(f"{total:8.1f} s  in all (tests over the --durations-min threshold)")


if __name__ == "__main__":
    main()
