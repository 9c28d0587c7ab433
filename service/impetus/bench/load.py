"""`impetus bench --scenario load`: a ramp of concurrent streaming clients
through nginx with API keys, the way a team's traffic arrives.

At each level N clients run in a closed loop for `duration` seconds (requests
running at the deadline finish; nothing new starts). The traffic is mixed:
- prompt lengths: short (a line), medium (~250 tokens), long (~900 tokens);
- some requests are deterministic repeats (temperature 0 of a few fixed
  questions): answered from the response cache after the first time;
- one client in ten uses a key (shared by those clients) that allows 1
  request a minute, so some requests are over their limit (429 by design);
- beyond the engine's batch + queue the server answers 503 by design.
A refused client waits for Retry-After (at most the time left), as OpenAI's
client does. Per level: generated tokens/s (cache hits apart), TTFT
p50/p95/p99, errors by kind, and the memory of every process.

Loopback only; bounded by the levels, the duration and max_tokens.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from impetus.bench import plots
from impetus.bench.stack import gateway_stack
from impetus.bench.traffic import Sampler, StreamResult, error_counts, percentile, stream_chat

TOPICS = ["a lighthouse", "the ocean", "a mountain village", "a robot", "a library", "a storm", "a garden",
          "a train journey", "a desert", "a forest", "a city at night", "a river", "a castle", "a comet"]
FILLER = ("The committee met on a grey morning to review the plans for the new harbour, the budget for the "
          "coming year, the state of the roads after the winter, and a long list of letters from residents "
          "who wanted the market moved back to the square. ")
CACHED_QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "What is 12 times 12?",
                    "Who wrote Hamlet?"]
TIGHT_RPM = 1  # one request, then one a minute


def prompt(rng: random.Random) -> tuple[str, str]:
    """A (length class, text) with the topic first, so prompts do not share a
    long prefix by accident."""
    topic = rng.choice(TOPICS)
    draw = rng.random()
    if draw < 0.5:
        return "short", f"Write two sentences about {topic}."
    repeats = 4 if draw < 0.85 else 15  # ~250 or ~900 tokens
    return ("medium" if repeats == 4 else "long"), f"About {topic}: {FILLER * repeats}Summarize the above."


class Client(threading.Thread):
    def __init__(self, index: int, url: str, key: str, model: str, deadline: float, max_tokens: int,
                 cached_share: float, seed: int):
        super().__init__(daemon=True)
        self.index, self.url, self.key, self.model = index, url, key, model
        self.deadline, self.max_tokens, self.cached_share = deadline, max_tokens, cached_share
        self.rng = random.Random(seed)
        self.results: list[tuple[str, StreamResult]] = []

    def run(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=httpx.Timeout(600, connect=30)) as http:
            while time.perf_counter() < self.deadline:
                if self.rng.random() < self.cached_share:
                    kind, body = "cached", {"temperature": 0, "messages": [
                        {"role": "user", "content": self.rng.choice(CACHED_QUESTIONS)}]}
                else:
                    kind, text = prompt(self.rng)
                    body = {"temperature": 0.8, "messages": [{"role": "user", "content": text}]}
                body.update(model=self.model, max_tokens=self.max_tokens)
                result = stream_chat(http, f"{self.url}/v1/chat/completions", body, headers)
                self.results.append((kind, result))
                if result.error in ("429", "503"):
                    wait = min(result.retry_after or 1.0, self.deadline - time.perf_counter())
                    if wait > 0:
                        time.sleep(wait)
                elif result.error:
                    time.sleep(0.2)  # a failure must not become a busy loop


def run_level(stack, keys: tuple[str, str], model: str, concurrency: int, duration: float, max_tokens: int,
              cached_share: float) -> dict:
    normal, tight = keys
    started = time.perf_counter()
    deadline = started + duration
    clients = [Client(i, stack.url, tight if i % 10 == 9 else normal, model, deadline, max_tokens, cached_share,
                      seed=concurrency * 1000 + i) for i in range(concurrency)]
    with Sampler(stack.pids, interval=1.0) as sampler:
        for client in clients:
            client.start()
        for client in clients:
            client.join()
    wall = time.perf_counter() - started
    results = [pair for client in clients for pair in client.results]
    generated = [r for kind, r in results if r.ok and r.cache != "hit"]
    hits = [r for kind, r in results if r.ok and r.cache == "hit"]
    ttfts = [r.ttft for r in generated if r.ttft is not None]
    by_length = {}
    for length in ("short", "medium", "long"):
        times = [r.ttft for kind, r in results if kind == length and r.ok and r.ttft is not None]
        by_length[length] = {"requests": len(times), "ttft_p50_s": percentile(times, 50)}
    return {
        "concurrency": concurrency,
        "wall_s": wall,
        "requests": len(results),
        "ok": len(generated) + len(hits),
        "cache_hits": len(hits),
        "generated_tokens": sum(r.tokens for r in generated),
        "tokens_per_s": sum(r.tokens for r in generated) / wall,
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_p99_s": percentile(ttfts, 99),
        "cache_hit_ttft_p50_s": percentile([r.ttft for r in hits if r.ttft is not None], 50),
        "ttft_by_prompt_length": by_length,
        "errors": error_counts([r for _, r in results]),
        "peak_rss_bytes": {name: sampler.peak(f"{name}_rss_bytes") for name in stack.pids},
        "peak_open_files": {name: sampler.peak(f"{name}_open_files") for name in stack.pids},
    }


def run(settings, levels: list[int], duration: float, max_tokens: int, work: Path, progress,
        cached_share: float = 0.15, workers: int = 1) -> dict:
    env = {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": settings.model,
           "IMPETUS_WORKERS": str(workers)}
    with gateway_stack(work, env, conn_per_client=max(levels) + 16) as stack:
        normal, _ = stack.keys.create("bench", rpm=1_000_000, tpm=1_000_000_000)
        tight, _ = stack.keys.create("bench-tight", rpm=TIGHT_RPM, tpm=1_000_000_000)
        progress(f"stack up: nginx {stack.url}, redis {stack.redis_url}, {workers} worker(s)")
        run_level(stack, (normal, tight), settings.model, 1, 3, 4, 0)  # warm-up
        results = []
        for level in levels:
            result = run_level(stack, (normal, tight), settings.model, level, duration, max_tokens, cached_share)
            results.append(result)
            p = lambda s: "-" if s is None else f"{s * 1000:.0f}"  # noqa: E731
            progress(f"  c={level}: {result['requests']} requests, {result['tokens_per_s']:.1f} tok/s, "
                     f"TTFT p50/p95/p99 {p(result['ttft_p50_s'])}/{p(result['ttft_p95_s'])}/"
                     f"{p(result['ttft_p99_s'])} ms, cache hits {result['cache_hits']}, errors {result['errors']}, "
                     f"server RSS {result['peak_rss_bytes']['server'] / 2**20:.0f} MiB")
    return {"scenario": "load", "model": settings.model, "max_tokens": max_tokens, "duration_s": duration,
            "workers": workers, "cached_share": cached_share, "tight_key_rpm": TIGHT_RPM, "levels": results}


def plot(summary: dict, out: Path) -> list[Path]:
    fig, (left, right) = plots.figure(2)
    levels = summary["levels"]
    xs = [level["concurrency"] for level in levels]
    left.plot(xs, [level["tokens_per_s"] for level in levels], "o-")
    plots.concurrency_axis(left, xs, "generated tokens/s", "Throughput (through nginx)")
    for q in (50, 95, 99):
        right.plot(xs, [level[f"ttft_p{q}_s"] for level in levels], "o-", label=f"TTFT p{q}")
    plots.concurrency_axis(right, xs, "seconds", "Time to first token", log_y=True)
    return plots.save(fig, out)
