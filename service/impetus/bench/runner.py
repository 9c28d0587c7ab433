"""`impetus bench`: raw mlx-lm against the server, in one run.

1. Raw: mlx-lm's `stream_generate` on the same model with the same weights the
   server serves (float32 on a CPU device), greedy, one stream.
2. Server: a real `impetus serve` on a free port, then N concurrent streaming
   chat requests at each level, each counting its own tokens.

Decode rate is (tokens - 1) / (last token time - first token time) for both
raw and the single server stream, so prefill is left out of both alike.
Aggregate rate at a level is all tokens / wall time of the level.
Machines here are noisy: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from impetus.bench.traffic import Background

TOPICS = ["a lighthouse", "the ocean", "a mountain village", "a robot", "a library", "a storm", "a garden",
          "a train journey", "a desert", "a forest", "a city at night", "a river", "a castle", "a comet",
          "a bakery", "a violin", "an island", "a snowfall", "a market", "a bridge"]


def _messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}."}]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def measure_raw(settings, max_tokens: int, console: Console) -> dict:
    from mlx_lm import stream_generate

    from impetus.models import loader, store

    path = store.resolve_model(settings.model, settings.models_dir, progress=console.print)
    loaded = loader.load(path, weights_dtype=settings.weights_dtype)
    tokenizer = loaded.tokenizer
    prompt = tokenizer.apply_chat_template(_messages(0), add_generation_prompt=True)
    for _ in stream_generate(loaded.model, tokenizer, prompt, max_tokens=8):  # warm-up
        pass
    start = time.perf_counter()
    times = []
    for _ in stream_generate(loaded.model, tokenizer, prompt, max_tokens=max_tokens):
        times.append(time.perf_counter())
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return {"tokens": len(times), "ttft_s": times[0] - start, "decode_tokens_per_s": decode,
            "weights_dtype": loaded.weights_dtype}


class _Stream:
    """One streaming chat request, timed per token."""

    def __init__(self, base_url: str, model: str, index: int, max_tokens: int):
        self.body = {"model": model, "messages": _messages(index), "max_tokens": max_tokens, "temperature": 0,
                     "stream": True, "stream_options": {"include_usage": True}}
        self.url = f"{base_url}/v1/chat/completions"
        self.start = self.first = self.last = None
        self.tokens = 0
        self.error = None

    def run(self) -> None:
        import httpx

        self.start = time.perf_counter()
        try:
            with httpx.stream("POST", self.url, json=self.body, timeout=600) as response:
                if response.status_code != 200:
                    self.error = f"HTTP {response.status_code}"
                    return
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        self.tokens = chunk["usage"]["completion_tokens"]
                    elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        now = time.perf_counter()
                        self.first = self.first or now
                        self.last = now
        except Exception as error:  # reported, not raised: one failure must not end the run
            self.error = repr(error)


class _HubProbe(Background):
    """Times GET /healthz every 100 ms while a level runs: if the engine
    thread starved the gevent hub, these would stretch to a token's time."""

    def __init__(self, base_url: str):
        super().__init__()
        self.url = f"{base_url}/healthz"
        self.latencies: list[float] = []

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=30) as http:
            while not self._stop.wait(0.1):
                start = time.perf_counter()
                http.get(self.url)
                self.latencies.append(time.perf_counter() - start)


def measure_level(base_url: str, model: str, concurrency: int, max_tokens: int) -> dict:
    streams = [_Stream(base_url, model, i, max_tokens) for i in range(concurrency)]
    threads = [threading.Thread(target=s.run) for s in streams]
    started = time.perf_counter()
    with _HubProbe(base_url) as probe:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - started
    ok = [s for s in streams if s.error is None and s.first is not None]
    tokens = sum(s.tokens for s in ok)
    ttfts = [s.first - s.start for s in ok]
    result = {
        "concurrency": concurrency,
        "errors": len(streams) - len(ok),
        "tokens": tokens,
        "wall_s": wall,
        "aggregate_tokens_per_s": tokens / wall if wall else float("nan"),
        "ttft_p50_s": _percentile(ttfts, 50),
        "ttft_p95_s": _percentile(ttfts, 95),
        "healthz_p50_s": _percentile(probe.latencies, 50),
        "healthz_p95_s": _percentile(probe.latencies, 95),
    }
    if concurrency == 1 and ok and ok[0].last > ok[0].first:
        s = ok[0]
        result["decode_tokens_per_s"] = (s.tokens - 1) / (s.last - s.first)
    return result


def run(args, settings) -> None:
    from impetus.server.process import free_port, start_server, stop_server

    console = Console(stderr=True, soft_wrap=True)
    levels = [int(x) for x in args.levels.split(",")]
    console.print(f"[bold]raw mlx-lm[/] stream_generate, {args.max_tokens} tokens")
    raw = measure_raw(settings, args.max_tokens, console)
    console.print(f"  {raw['decode_tokens_per_s']:.1f} tok/s decode, TTFT {raw['ttft_s'] * 1000:.0f} ms")

    port = args.port or free_port()
    log = Path(tempfile.mkdtemp(prefix="impetus-bench-")) / "server.log"
    console.print(f"[bold]server[/] on port {port} (log: {log})")
    process = start_server(port, log, {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": settings.model})
    base_url = f"http://127.0.0.1:{port}"
    try:
        measure_level(base_url, settings.model, 1, 8)  # warm-up
        results = []
        for level in levels:
            result = measure_level(base_url, settings.model, level, args.max_tokens)
            results.append(result)
            console.print(f"  c={level}: {result['aggregate_tokens_per_s']:.1f} tok/s aggregate, "
                          f"TTFT p50 {result['ttft_p50_s'] * 1000:.0f} ms, /healthz p50 "
                          f"{result['healthz_p50_s'] * 1000:.1f} ms, errors {result['errors']}")
    finally:
        stop_server(process)

    by_level = {r["concurrency"]: r for r in results}
    single = by_level.get(1, {})
    server_tps = single.get("decode_tokens_per_s", float("nan"))
    summary = {
        "model": settings.model,
        "weights_dtype": raw["weights_dtype"],
        "max_tokens": args.max_tokens,
        "raw_tokens_per_s": raw["decode_tokens_per_s"],
        "raw_ttft_s": raw["ttft_s"],
        "server_tokens_per_s": server_tps,
        "ratio_single_stream": server_tps / raw["decode_tokens_per_s"],
        "levels": results,
    }
    if 1 in by_level and 16 in by_level:
        summary["ratio_batch16_over_single"] = (
            by_level[16]["aggregate_tokens_per_s"] / by_level[1]["aggregate_tokens_per_s"]
        )
    if args.json:
        print(json.dumps(summary))
        return
    table = Table("concurrency", "tok/s (aggregate)", "TTFT p50 ms", "TTFT p95 ms", "/healthz p95 ms", "errors",
                  "x single")
    base = by_level.get(1, results[0])["aggregate_tokens_per_s"]
    for r in results:
        table.add_row(str(r["concurrency"]), f"{r['aggregate_tokens_per_s']:.1f}", f"{r['ttft_p50_s'] * 1000:.0f}",
                      f"{r['ttft_p95_s'] * 1000:.0f}", f"{r['healthz_p95_s'] * 1000:.1f}", str(r["errors"]),
                      f"{r['aggregate_tokens_per_s'] / base:.2f}")
    Console().print(table)
    Console().print(f"single stream: server {server_tps:.1f} tok/s vs raw mlx-lm {raw['decode_tokens_per_s']:.1f} "
                    f"tok/s = [bold]{summary['ratio_single_stream']:.2f}x[/]")
    if "ratio_batch16_over_single" in summary:
        Console().print(f"aggregate at 16 / single: [bold]{summary['ratio_batch16_over_single']:.2f}x[/]")
