"""`impetus bench --scenario peer`: this server and `mlx_lm.server` side by
side, in one run, on the same model, the same machine and the same requests.

`mlx_lm.server` is the direct peer: the same mlx-lm `BatchGenerator` behind a
plain HTTP server. Each server runs alone (never both at once: they would
share the cores), directly on loopback (no nginx, no keys: the same path for
both). At each level N clients each send the same streaming greedy requests
to both, every prompt different.

Two pairings, because this server chooses its weights on a CPU device:
- "same folder": both are given the imported model folder as a user would
  point them at it. mlx_lm.server computes with the stored 4-bit weights;
  this server serves them as float32 (`weights_dtype=auto`).
- "same weights": both are given a float32 copy of the model, so only the
  serving differs.
On Linux both processes get Debian's OpenBLAS (the peer through the same
preload, before mlx is imported): without it the peer would be ~15x slower
at prefill and the comparison would measure the BLAS, not the server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from impetus.bench import plots
from impetus.bench.traffic import StreamResult, error_counts, percentile, run_together, stream_chat
from impetus.server.process import free_port, start_server, stop_server, wait_until_ready

PEER_LAUNCHER = ("from impetus.system.blas import preload_openblas; preload_openblas(); "
                 "import sys; from mlx_lm.server import main; sys.argv[0] = 'mlx_lm.server'; main()")


def float32_copy(source: Path, target: Path) -> Path:
    """The model as an MLX folder of float32 weights (mlx-lm's own `save`)."""
    if (target / "config.json").exists():
        return target
    from mlx_lm.utils import save

    from impetus.models.loader import load

    loaded = load(source, weights_dtype="float32")
    config = {k: v for k, v in loaded.config.items() if not k.startswith("quantization") and k != "impetus"}
    save(target, source, loaded.model, loaded.tokenizer, config)
    return target


def start_peer(folder: Path, port: int, log: Path, timeout: float = 180) -> subprocess.Popen:
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", PEER_LAUNCHER, "--model", str(folder), "--port", str(port),
                                    "--log-level", "WARNING"], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    return wait_until_ready(process, f"http://127.0.0.1:{port}/v1/models", log, timeout)


def _messages(level: int, client: int, turn: int) -> list[dict]:
    from impetus.bench.load import TOPICS

    topic = TOPICS[(client + turn) % len(TOPICS)]
    return [{"role": "user", "content": f"Request {level}.{client}.{turn}: write a short story about {topic}."}]


def measure(url: str, model: str, concurrency: int, requests_per_client: int, max_tokens: int) -> dict:
    import httpx

    results: list[StreamResult] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(900, connect=30)) as http:
            for turn in range(requests_per_client):
                body = {"model": model, "messages": _messages(concurrency, index, turn), "temperature": 0,
                        "max_tokens": max_tokens}
                result = stream_chat(http, f"{url}/v1/chat/completions", body)
                with lock:
                    results.append(result)

    wall = run_together(client, concurrency)
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    tokens = sum(r.tokens for r in ok)
    return {"concurrency": concurrency, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
            "errors": error_counts(results)}


def _series(name: str, start, url: str, model: str, levels, requests_per_client, max_tokens, progress) -> list:
    process = start()
    try:
        measure(url, model, 1, 1, 4)  # warm-up
        rows = []
        for level in levels:
            row = measure(url, model, level, requests_per_client, max_tokens)
            rows.append(row)
            progress(f"    {name:<14} c={level:<3} {row['tokens_per_s']:6.1f} tok/s  TTFT p50 "
                     f"{(row['ttft_p50_s'] or 0) * 1000:6.0f} ms  errors {row['errors']}")
        return rows
    finally:
        stop_server(process)


def compare(settings, folder: Path, label: str, levels, requests_per_client: int, max_tokens: int, work: Path,
            progress) -> dict:
    progress(f"  [{label}] {folder}")
    ours_port, peer_port = free_port(), free_port()
    env = {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": str(folder),
           "IMPETUS_MAX_QUEUE": str(max(levels) * requests_per_client + 16)}
    model = folder.name
    ours = _series("impetus", lambda: start_server(ours_port, work / f"impetus-{label}.log", env),
                   f"http://127.0.0.1:{ours_port}", model, levels, requests_per_client, max_tokens, progress)
    peer = _series("mlx_lm.server", lambda: start_peer(folder, peer_port, work / f"peer-{label}.log"),
                   f"http://127.0.0.1:{peer_port}", "default_model", levels, requests_per_client, max_tokens,
                   progress)
    rows = []
    for a, b in zip(ours, peer):
        rows.append({"concurrency": a["concurrency"], "impetus": a, "mlx_lm_server": b,
                     "throughput_ratio": a["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else None,
                     "ttft_p50_ratio": (b["ttft_p50_s"] / a["ttft_p50_s"]
                                        if a["ttft_p50_s"] and b["ttft_p50_s"] else None)})
    return {"pairing": label, "folder": str(folder), "rows": rows}


def run(settings, levels: list[int], max_tokens: int, requests_per_client: int, work: Path, progress,
        pairings: tuple[str, ...] = ("same weights", "same folder"), folder_levels: list[int] | None = None) -> dict:
    from impetus.models import store

    source = store.resolve_model(settings.model, settings.models_dir, progress=progress)
    results = []
    for label in pairings:
        if label == "same weights":
            folder = float32_copy(source, work / f"{source.name}-float32")
            results.append(compare(settings, folder, label, levels, requests_per_client, max_tokens, work, progress))
        else:  # the peer's quantized CPU path is slow: fewer levels keep the run bounded
            results.append(compare(settings, source, label, folder_levels or levels, requests_per_client,
                                   max_tokens, work, progress))
    return {"scenario": "peer", "model": settings.model, "max_tokens": max_tokens,
            "requests_per_client": requests_per_client, "pairings": results}


def plot(summary: dict, out: Path) -> list[Path]:
    pairings = summary["pairings"]
    fig, axes = plots.figure(len(pairings))
    for ax, pairing in zip(axes, pairings):
        plots.against_peer(ax, pairing["rows"], "mlx_lm_server", "mlx_lm.server", "tokens/s (aggregate)",
                           pairing["pairing"])
    return plots.save(fig, out)
