"""The order in which pytest-xdist hands out test files: longest first.

Under `--dist loadfile` a file runs whole on one worker, and xdist hands out
files in the order it is given them (upstream orders them by how many tests
they hold). The run ends when the later worker does, so the longest files go
first and the short ones fill in at the end (the LPT rule): in a run ordered by
count, one worker had finished its last file 50 s before the other, which
was still in its 36-second schemathesis file.

The seconds are measured: every run under xdist writes each file's setup, call
and teardown seconds to test-artifacts/file-seconds.json; copying that over
tests/file_seconds.json refreshes the order. A file not listed yet (a new one)
counts as the median file, so it is neither first nor last.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).parent
MEASURED = TESTS / "file_seconds.json"
WRITTEN = TESTS.parent / "test-artifacts" / "file-seconds.json"


def file_of(nodeid: str) -> str:
    return nodeid.split("::")[0]


def longest_first(items: list, scope_of) -> None:
    """Sort `items` in place: scopes (a file, or files run as one) by their
    measured seconds, longest first; within a scope, as collected."""
    seconds = json.loads(MEASURED.read_text())
    usual = statistics.median(seconds.values())
    weight: Counter = Counter()
    for path in {file_of(item.nodeid) for item in items}:
        weight[scope_of(path)] += seconds.get(path, usual)
    scopes = [scope_of(file_of(item.nodeid)) for item in items]
    first_seen = {scope: scopes.index(scope) for scope in weight}
    order = sorted(range(len(items)), key=lambda i: (-weight[scopes[i]], first_seen[scopes[i]]))
    items[:] = [items[i] for i in order]


class FileSeconds:
    """On the controller: each file's seconds, from the reports the workers send."""

    def __init__(self):
        self.seconds: Counter = Counter()

    def add(self, report) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def write(self) -> None:
        WRITTEN.parent.mkdir(exist_ok=True)
        WRITTEN.write_text(json.dumps({path: round(s, 1) for path, s in sorted(self.seconds.items())}, indent=1) + "\n")
