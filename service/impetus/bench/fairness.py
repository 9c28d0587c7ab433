"""`impetus bench --scenario fairness`: one key floods, another asks now and then.

On the production path (redis-server, the workers with keys required, nginx),
run twice in one process run: with the fair scheduler and with
IMPETUS_SCHEDULER=fifo (first come, first served, as mlx_lm.server), the
baseline. Each run:

1. alone: key B sends `probes` short streaming requests one after another;
   its time to first token (TTFT) alone is the reference;
2. flood: key A sends `flood` streaming requests of `max_tokens` at once;
   a second later key B sends one short request every `interval` seconds
   while A's flood lasts.

Reported: B's TTFT p50/p95 under the flood divided by B's TTFT alone (the
slowdown; target <= 3x), and the aggregate tokens/s of the flood (target:
>= 0.95x FIFO's).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from impetus.bench import plots
from impetus.bench.stack import gateway_stack
from impetus.bench.traffic import StreamResult, error_counts, percentile, stream_chat


def _short(k: int) -> list[dict]:
    """Key B's short request; each one different (no prefix-cache hit beyond the template)."""
    return [{"role": "user", "content": f"Question {k}: say hello in three words."}]


def _flood_messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Flood request {i}: write a long story about a harbour at night."}]


def one_run(settings, scheduler: str, flood: int, max_tokens: int, probes: int, interval: float, work: Path,
            progress) -> dict:
    import httpx

    env = {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": settings.model,
           "IMPETUS_SCHEDULER": scheduler, "IMPETUS_MAX_QUEUE": str(flood + 16)}
    with gateway_stack(work / scheduler, env) as stack:
        a, _ = stack.keys.create("flood-a", rpm=100_000, tpm=100_000_000)
        b, _ = stack.keys.create("probe-b", rpm=100_000, tpm=100_000_000)
        url = f"{stack.url}/v1/chat/completions"
        model = settings.model

        probes_sent = iter(range(10**6))

        def probe(http) -> StreamResult:
            return stream_chat(http, url, {"model": model, "messages": _short(next(probes_sent)), "max_tokens": 8,
                                           "temperature": 0},
                               {"Authorization": f"Bearer {b}", "Cache-Control": "no-cache"})

        with httpx.Client(timeout=httpx.Timeout(900, connect=30)) as http:
            probe(http)  # warm-up
            alone = [probe(http) for _ in range(probes)]
        flood_results: list[StreamResult] = []
        probe_results: list[StreamResult] = []
        lock = threading.Lock()
        done = threading.Event()

        def flooder(i: int) -> None:
            with httpx.Client(timeout=httpx.Timeout(900, connect=30)) as http:
                result = stream_chat(http, url, {"model": model, "messages": _flood_messages(i),
                                                 "max_tokens": max_tokens, "temperature": 0,
                                                 "logit_bias": {str(t): -100 for t in (0, 2)}},
                                     {"Authorization": f"Bearer {a}", "Cache-Control": "no-cache"})
            with lock:
                flood_results.append(result)

        def prober() -> None:
            time.sleep(1.0)
            with httpx.Client(timeout=httpx.Timeout(900, connect=30)) as http:
                while not done.is_set():
                    started = time.perf_counter()
                    probe_results.append(probe(http))
                    done.wait(max(0.0, interval - (time.perf_counter() - started)))

        threads = [threading.Thread(target=flooder, args=(i,)) for i in range(flood)]
        probing = threading.Thread(target=prober)
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        probing.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        done.set()
        probing.join()
    alone_ttft = [r.ttft for r in alone if r.ttft is not None]
    flood_ttft = [r.ttft for r in probe_results if r.ttft is not None]
    base = percentile(alone_ttft, 50)
    tokens = sum(r.tokens for r in flood_results + probe_results if r.ok)
    row = {
        "scheduler": scheduler, "b_alone_ttft_p50_s": base, "b_flood_ttft_p50_s": percentile(flood_ttft, 50),
        "b_flood_ttft_p95_s": percentile(flood_ttft, 95), "b_probes": len(probe_results),
        "b_slowdown_p50": (percentile(flood_ttft, 50) or 0) / base if base else None,
        "b_slowdown_p95": (percentile(flood_ttft, 95) or 0) / base if base else None,
        "flood_wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
        "a_ttft_p50_s": percentile([r.ttft for r in flood_results if r.ttft is not None], 50),
        "errors": error_counts(flood_results + probe_results),
        "b_flood_ttfts_s": flood_ttft,
    }
    def ms(seconds):
        return "-" if seconds is None else f"{seconds * 1000:.0f} ms"

    progress(f"  {scheduler:<5} B TTFT alone {ms(base)}, under the flood p50 {ms(row['b_flood_ttft_p50_s'])} "
             f"({row['b_slowdown_p50'] or 0:.1f}x) p95 {ms(row['b_flood_ttft_p95_s'])} "
             f"({row['b_slowdown_p95'] or 0:.1f}x), {len(flood_ttft)} questions; "
             f"{row['tokens_per_s']:.1f} tok/s aggregate; errors {row['errors']}")
    return row


def run(settings, flood: int, max_tokens: int, probes: int, interval: float, work: Path, progress) -> dict:
    rows = [one_run(settings, scheduler, flood, max_tokens, probes, interval, work, progress)
            for scheduler in ("fair", "fifo")]
    fair, fifo = rows
    return {"scenario": "fairness", "model": settings.model, "flood": flood, "max_tokens": max_tokens,
            "probe_interval_s": interval, "runs": rows,
            "throughput_vs_fifo": fair["tokens_per_s"] / fifo["tokens_per_s"] if fifo["tokens_per_s"] else None}


def plot(summary: dict, out: Path) -> list[Path]:
    fig, (ax,) = plots.figure(1)
    for row in summary["runs"]:
        ttfts = row["b_flood_ttfts_s"]
        ax.plot(range(1, len(ttfts) + 1), ttfts, "o-", label=f"{row['scheduler']} (under the flood)")
        ax.axhline(row["b_alone_ttft_p50_s"], linestyle=":", color="gray")
    ax.set(xlabel="key B's request, in order", ylabel="time to first token (s)", yscale="log",
           title=f"key A floods {summary['flood']} streams; key B probes")
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save(fig, out)
