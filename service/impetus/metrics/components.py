"""`impetus_component_restarts_total{component}`: how often `impetus up` has
restarted redis-server, the Gunicorn master or nginx.

`up` is not scraped (it serves nothing), so it writes its counts to
`restarts.json` in the stack's run dir, atomically, and every worker exports
them at scrape time. Counts start at 0 with each `up` (a counter reset, which
Prometheus' `increase()` handles). Outside `up` there is no file and no series.
"""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.core import CounterMetricFamily

RESTARTS_FILE = "restarts.json"


def read_restarts(run_dir: Path) -> dict[str, int]:
    """What `up` recorded; empty when it is not running the stack."""
    try:
        counts = json.loads((run_dir / RESTARTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(counts, dict):
        return {}
    return {str(name): int(count) for name, count in counts.items()}


class ComponentRestarts:
    """A custom collector over `restarts.json`."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def collect(self):
        family = CounterMetricFamily("impetus_component_restarts", "Restarts of a stack component by `impetus up`",
                                     labels=("component",))
        for name, count in sorted(read_restarts(self.run_dir).items()):
            family.add_metric([name], count)
        yield family
