"""`impetus usage`, `impetus audit` and `impetus hosts`: usage per key, model
and day, the admin actions, and the hosts serving, read from the stack's Redis
(as `impetus keys` does)."""

from __future__ import annotations

import csv
import json
import sys
import time
from datetime import date

from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from impetus.cli.output import table_console
from impetus.gateway import connect
from impetus.gateway.audit import AuditLog
from impetus.gateway.hosts import HostRegistry
from impetus.gateway.usage import METRICS, UsageLedger, totals


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"error: not a date (YYYY-MM-DD): {text!r}") from None


def usage(args, settings) -> None:
    ledger = UsageLedger(connect(settings.effective_redis_url), retention_days=settings.usage_retention_days)
    since = _date(args.since) if args.since else None
    until = _date(args.until) if args.until else None
    rows = _read(lambda: ledger.report(since=since, until=until, key=args.key), settings)
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["date", "key", "model", *METRICS])
        for row in rows:
            writer.writerow([row.day, row.key, row.model, *(getattr(row, m) for m in METRICS)])
        return
    if args.json:
        print(json.dumps({"totals": totals(rows), "data": [row.as_dict() for row in rows]}, indent=2))
        return
    table = Table("date", "key", "model", "requests", "prompt tokens", "completion tokens", "cached tokens")
    for row in rows:
        table.add_row(row.day, row.key, row.model, *(f"{getattr(row, m):,}" for m in METRICS))
    whole = totals(rows)
    table.add_row("total", "", "", *(f"{whole[m]:,}" for m in METRICS), style="bold")
    table_console().print(table)


def audit(args, settings) -> None:
    trail = AuditLog(connect(settings.effective_redis_url))
    entries = _read(lambda: trail.latest(args.limit, action=args.action, who=args.who), settings)
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    table = Table("when", "who", "action", "target", "from", "details")
    for entry in entries:
        table.add_row(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["at"])), entry["who"],
                      entry["action"], entry["target"], entry["address"],
                      ", ".join(f"{k}={v}" for k, v in entry["detail"].items() if v not in (None, [], "")))
    table_console().print(table)


def hosts(args, settings) -> None:
    found = _read(lambda: HostRegistry(connect(settings.effective_redis_url)).hosts(), settings)
    if args.json:
        print(json.dumps([host.as_dict() for host in found], indent=2))
        return
    table = Table("host", "version", "workers", "loaded", "can serve", "running", "waiting", "memory", "heartbeat")
    for host in found:
        table.add_row(host.address, host.version, str(host.workers), ", ".join(host.loaded) or "-",
                      str(len(host.models)), str(host.running), str(host.waiting),
                      f"{host.used_bytes / 2**30:.1f} / {host.budget_bytes / 2**30:.1f} GiB",
                      f"{host.heartbeat_age_s:.0f}s ago")
    table_console().print(table)
    if not found:
        Console(stderr=True).print("no host is heartbeating into this Redis (is `impetus up` or `impetus serve` "
                                   "with keys running?)")


def _read(read, settings):
    try:
        return read()
    except RedisError as error:
        Console(stderr=True).print(f"[red]error:[/] cannot reach Redis at {settings.effective_redis_url} ({error}). "
                                   "Is the stack running (`impetus up`)?")
        sys.exit(2)
