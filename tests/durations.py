"""Seconds per test file, for the order in which pytest-xdist hands files out (tests/conftest.py).

    .venv/bin/python -m pytest -q -p no:cacheprovider --durations=0 > /tmp/durations.log
    .venv/bin/python tests/durations.py /tmp/durations.log     # rewrites tests/durations.json

Only the order of files depends on these figures, never a result: stale or missing ones cost balance.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

FILE = Path(__file__).with_name("durations.json")
LINE = re.compile(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(\S+?\.py)::")


def per_file(log: str) -> dict[str, float]:
    """Setup, call and teardown seconds of every test in a `--durations=0` report, summed per file."""
    seconds: Counter[str] = Counter()
    for line in log.splitlines():
        if match := LINE.match(line):
            seconds[match.group(2)] += float(match.group(1))
    return {name: round(total, 1) for name, total in sorted(seconds.items()) if total >= 1.0}


def load() -> dict[str, float]:
    return json.loads(FILE.read_text(encoding="utf-8")) if FILE.exists() else {}


if __name__ == "__main__":
    measured = per_file(Path(sys.argv[1]).read_text(encoding="utf-8"))
    if not measured:
        sys.exit(f"{sys.argv[1]}: no durations (run pytest with --durations=0)")
    FILE.write_text(json.dumps(measured, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{FILE}: {len(measured)} files, {sum(measured.values()):.0f} s")
