"""`impetus bench --scenario soak`: moderate, steady load through nginx with a
key for a bounded time (10 minutes by default), recording every few seconds
the memory and open files of the workers, nginx and Redis. A leak shows as a
slope: the summary compares the first and last fifth of the run and fits a
line (MiB and files per minute) over the second half, after warm-up.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from impetus.bench import plots
from impetus.bench.load import Client
from impetus.bench.stack import gateway_stack
from impetus.bench.traffic import Sampler, error_counts


def slope_per_minute(ts: list[float], values: list[float]) -> float | None:
    """Least-squares slope, per minute."""
    n = len(ts)
    if n < 2:
        return None
    mean_t, mean_v = sum(ts) / n, sum(values) / n
    var = sum((t - mean_t) ** 2 for t in ts)
    if var == 0:
        return None
    return 60 * sum((t - mean_t) * (v - mean_v) for t, v in zip(ts, values)) / var


def summarize(samples: list[dict], names: list[str]) -> dict:
    fifth = max(1, len(samples) // 5)
    first, last, second_half = samples[:fifth], samples[-fifth:], samples[len(samples) // 2:]
    out = {}
    for name in names:
        for column, scale, unit in ((f"{name}_rss_bytes", 2**20, "mib"), (f"{name}_open_files", 1, "files")):
            if any(s.get(column) is None for s in samples):
                continue
            mean = lambda rows: sum(r[column] for r in rows) / len(rows) / scale  # noqa: E731
            out[f"{name}_{unit}_first_fifth"] = mean(first)
            out[f"{name}_{unit}_last_fifth"] = mean(last)
            out[f"{name}_{unit}_per_minute_second_half"] = slope_per_minute(
                [s["t"] for s in second_half], [s[column] / scale for s in second_half])
    return out


def run(settings, duration: float, concurrency: int, max_tokens: int, work: Path, progress,
        interval: float = 5.0) -> dict:
    env = {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": settings.model}
    with gateway_stack(work, env) as stack:
        key, _ = stack.keys.create("soak", rpm=1_000_000, tpm=1_000_000_000)
        progress(f"soak: {concurrency} clients for {duration:.0f} s through {stack.url}, a sample every {interval} s")
        deadline = time.perf_counter() + duration
        clients = [Client(i, stack.url, key, settings.model, deadline, max_tokens, cached_share=0.1, seed=i)
                   for i in range(concurrency)]
        with Sampler(stack.pids, interval=interval) as sampler:
            for client in clients:
                client.start()
            done = threading.Event()

            def report() -> None:
                while not done.wait(60):
                    count = sum(len(c.results) for c in clients)
                    last = sampler.samples[-1] if sampler.samples else {}
                    progress(f"  {last.get('t', 0):5.0f} s: {count} requests, server RSS "
                             f"{last.get('server_rss_bytes', 0) / 2**20:.0f} MiB, "
                             f"open files {last.get('server_open_files')}")

            reporter = threading.Thread(target=report, daemon=True)
            reporter.start()
            for client in clients:
                client.join()
            done.set()
        results = [r for c in clients for _, r in c.results]
    summary = summarize(sampler.samples, list(stack.pids))
    return {"scenario": "soak", "model": settings.model, "duration_s": duration, "concurrency": concurrency,
            "max_tokens": max_tokens, "requests": len(results), "ok": sum(r.ok for r in results),
            "generated_tokens": sum(r.tokens for r in results if r.ok and r.cache != "hit"),
            "errors": error_counts(results), "summary": summary, "samples": sampler.samples}


def plot(result: dict, out: Path) -> list[Path]:
    fig, (mem, files) = plots.figure(2)
    samples = result["samples"]
    ts = [s["t"] / 60 for s in samples]
    for name in ("server", "nginx", "redis"):
        mem.plot(ts, [s[f"{name}_rss_bytes"] / 2**20 for s in samples], label=name)
        if samples and samples[0].get(f"{name}_open_files") is not None:
            files.plot(ts, [s[f"{name}_open_files"] for s in samples], label=name)
    mem.set(xlabel="minutes", ylabel="resident memory (MiB)", title="Memory during the soak")
    files.set(xlabel="minutes", ylabel="open file descriptors", title="Open files during the soak")
    for ax in (mem, files):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_ylim(bottom=0)
    return plots.save(fig, out)
