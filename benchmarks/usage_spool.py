"""What the usage spool costs a response (issue 31), against the write it replaced.

One run starts a redis-server as the stack runs it (append-only file, fsync every
second) and times, per finished response, the charge a worker makes before the last
chunk leaves:
  a) before: one pipeline of the key's totals and its daily ledger (no id, no spool);
  b) now: the same writes as a charge through `UsageSpool.add` (appended to the
     spool file and fsync'd, then one script that skips a known id).
Blocks of each alternate, so the machine's noise falls on both.

Usage: .venv/bin/python benchmarks/usage_spool.py [--charges 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from impetus.gateway import connect
from impetus.gateway.keys import KeyStore
from impetus.gateway.spool import Ops, UsageSpool
from impetus.gateway.usage import UsageLedger
from impetus.server.process import free_port


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory)],
                               stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = connect(url)
    for _ in range(200):
        try:
            client.ping()
            return process, url
        except Exception:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--charges", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        process, url = start_redis(Path(work))
        try:
            writer = connect(url, read_timeout=5.0)
            keys, ledger = KeyStore(writer), UsageLedger(writer, writer=writer)
            spool = UsageSpool(Path(work) / "spool", writer)

            def before() -> None:
                pipe = writer.pipeline(transaction=False)
                keys.record_usage("k" * 64, 120, 30, pipe)
                ledger.record("k" * 64, "alice", "smollm2", 120, 30, 24, pipe)
                pipe.execute()

            def now() -> None:
                ops = Ops()
                keys.record_usage("k" * 64, 120, 30, ops)
                ledger.record("k" * 64, "alice", "smollm2", 120, 30, 24, ops)
                spool.add(ops)

            times = {"before": [], "spool": []}
            block = max(1, args.charges // 10)
            for _ in range(10):
                for name, charge in (("before", before), ("spool", now)):
                    for _ in range(block):
                        started = time.perf_counter()
                        charge()
                        times[name].append(time.perf_counter() - started)
                spool.step()  # the worker's loop, once a second in production
        finally:
            process.terminate()
            process.wait()

    def us(values, q=50):
        ordered = sorted(values)
        return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1e6, 1)

    result = {"charges_each": len(times["before"]),
              **{f"{name}_p50_us": us(v) for name, v in times.items()},
              **{f"{name}_p95_us": us(v, 95) for name, v in times.items()},
              "mean_ratio": round(statistics.mean(times["spool"]) / statistics.mean(times["before"]), 2)}
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
