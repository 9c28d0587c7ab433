"""`impetus bench --scenario vision`: images beside text, against mlx-vlm's own server.

One VLM folder (by default a random SmolVLM, Idefics3 of SmolLM2-135M's
text width with a 224-pixel SigLIP tower, 64 tokens an image:
impetus.bench.random_vlm; or `--model` for a real one), served in turn by
this server and by mlx-vlm's server (`python -m mlx_vlm.server`, its
continuous batching at `--max-num-seqs`), never both at once, on loopback
without keys. Both get the folder as it is (float32 weights on this CPU).
Not Gemma 3 by default: mlx-vlm 0.7.10's server fails every Gemma 3 image
request batched with one of another prompt length (its `attention_mask_4d`
rows cannot be concatenated), which measures nothing.

Two measures, each against its baseline in the same run:
- **Mixed load.** N clients at once, half asking about a picture (each its
  own), half plain text, every prompt different, greedy, streamed: aggregate
  tokens/s and TTFT by kind, this server / mlx-vlm's (target: >= 1 at N >= 8).
- **A repeated image.** The same picture and question asked again after a
  different one: the second TTFT with this server's prefix cache against the
  same request with it off (IMPETUS_PROMPT_CACHE_ENTRIES=0 and the disk tier
  off: encoded and prefilled again), target >= 5x; mlx-vlm's server's own
  cold/warm ratio is reported beside it.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from pathlib import Path

from impetus.bench import plots
from impetus.bench.traffic import StreamResult, error_counts, percentile, run_together, stream_chat
from impetus.server.process import free_port, start_server, stop_server, wait_until_ready

PEER = ("from impetus.system.blas import preload_openblas; preload_openblas(); "
        "import sys; from mlx_vlm.server import main; sys.argv[0] = 'mlx_vlm.server'; main()")
TOPICS = ("a lighthouse", "a market", "the moon", "a river", "a library", "a garden", "a storm", "a train")


def picture(seed: int, size: int = 320) -> str:
    from impetus.bench.random_vlm import picture as png

    return "data:image/png;base64," + base64.b64encode(png(seed, (size, size))).decode()


def body(model: str, client: int, level: int, image: bool, max_tokens: int, seed: int = 0) -> dict:
    text = f"Request {level}.{client}: describe {TOPICS[client % len(TOPICS)]} in detail."
    content = ([{"type": "image_url", "image_url": {"url": picture(1000 * level + client + seed)}},
                {"type": "text", "text": text}] if image else text)
    return {"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": max_tokens}


def mixed(url: str, model: str, level: int, max_tokens: int) -> dict:
    import httpx

    results: list[tuple[bool, StreamResult]] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        image = index % 2 == 0
        with httpx.Client(timeout=httpx.Timeout(1800, connect=30)) as http:
            result = stream_chat(http, f"{url}/v1/chat/completions", body(model, index, level, image, max_tokens))
        with lock:
            results.append((image, result))

    wall = run_together(client, level)
    ok = [(image, r) for image, r in results if r.ok]
    tokens = sum(r.tokens for _, r in ok)
    return {"concurrency": level, "requests": len(results), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall,
            "ttft_p50_image_s": percentile([r.ttft for image, r in ok if image and r.ttft], 50),
            "ttft_p50_text_s": percentile([r.ttft for image, r in ok if not image and r.ttft], 50),
            "errors": error_counts([r for _, r in results])}


def repeated(url: str, model: str, max_tokens: int, rounds: int = 3) -> dict:
    """TTFT (medians of `rounds`) of a new picture's question, and of the same
    question asked again after another picture's."""
    import httpx

    firsts, agains = [], []
    with httpx.Client(timeout=httpx.Timeout(1800, connect=30)) as http:
        def ask(seed: int) -> StreamResult:
            return stream_chat(http, f"{url}/v1/chat/completions", body(model, 0, 999, True, max_tokens, seed))
        for round_ in range(rounds):
            firsts.append(ask(100 + round_).ttft)
            ask(200 + round_)
            agains.append(ask(100 + round_).ttft)
    first, again = percentile([t for t in firsts if t], 50), percentile([t for t in agains if t], 50)
    return {"first_ttft_s": first, "again_ttft_s": again, "speedup": first / again if first and again else None}


def start_peer(folder: Path, port: int, log: Path, max_seqs: int) -> subprocess.Popen:
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-c", PEER, "--model", str(folder), "--port", str(port),
                                    "--max-num-seqs", str(max_seqs), "--log-level", "WARNING"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return wait_until_ready(process, f"http://127.0.0.1:{port}/v1/models", log, 300)


def _series(name, start, url, model, levels, max_tokens, progress) -> dict:
    process = start()
    try:
        mixed(url, model, 2, 4)  # warm-up: first image, first text
        rows = []
        for level in levels:
            row = mixed(url, model, level, max_tokens)
            rows.append(row)
            progress(f"    {name:<16} c={level:<3} {row['tokens_per_s']:6.1f} tok/s  TTFT p50 image "
                     f"{(row['ttft_p50_image_s'] or 0) * 1000:6.0f} ms text {(row['ttft_p50_text_s'] or 0) * 1000:6.0f}"
                     f" ms  errors {row['errors']}")
        again = repeated(url, model, max_tokens)
        progress(f"    {name:<16} repeated image: TTFT {again['first_ttft_s'] * 1000:.0f} ms, then "
                 f"{again['again_ttft_s'] * 1000:.0f} ms")
        return {"rows": rows, "repeated": again}
    finally:
        stop_server(process)


def run(settings, levels: list[int], max_tokens: int, work: Path, progress, folder: Path | None = None) -> dict:
    from impetus.bench import random_vlm

    if folder is None:
        folder = random_vlm.idefics3(work / "random-smolvlm", size="small")
    progress(f"  model folder: {folder}")
    name = folder.name
    env = {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": str(folder),
           "IMPETUS_MAX_QUEUE": str(max(levels) + 16), "IMPETUS_PREFIX_CACHE_DISK": "false"}
    port = free_port()
    ours = _series("impetus", lambda: start_server(port, work / "impetus.log", env), f"http://127.0.0.1:{port}",
                   name, levels, max_tokens, progress)
    cold_env = {**env, "IMPETUS_PROMPT_CACHE_ENTRIES": "0", "IMPETUS_SHARE_PREFIX_IN_FLIGHT": "false"}
    process = start_server(port, work / "impetus-no-cache.log", cold_env)
    try:
        mixed(f"http://127.0.0.1:{port}", name, 2, 4)  # warm-up
        no_cache = repeated(f"http://127.0.0.1:{port}", name, max_tokens)
    finally:
        stop_server(process)
    progress(f"    impetus, no cache repeated image: TTFT {no_cache['again_ttft_s'] * 1000:.0f} ms")
    peer_port = free_port()
    peer = _series("mlx_vlm.server", lambda: start_peer(folder, peer_port, work / "peer.log", max(levels)),
                   f"http://127.0.0.1:{peer_port}", str(folder), levels, max_tokens, progress)
    rows = [{"concurrency": a["concurrency"], "impetus": a, "mlx_vlm_server": b,
             "throughput_ratio": a["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else None}
            for a, b in zip(ours["rows"], peer["rows"])]
    cached, cold = ours["repeated"]["again_ttft_s"], no_cache["again_ttft_s"]
    return {"scenario": "vision", "model": str(folder), "max_tokens": max_tokens, "rows": rows,
            "repeated_image": {"impetus": ours["repeated"], "impetus_without_prefix_cache": no_cache,
                               "mlx_vlm_server": peer["repeated"],
                               "prefix_cache_speedup": cold / cached if cached and cold else None},
            "measured_at": time.strftime("%H:%M:%S")}


def plot(summary: dict, out: Path) -> list[Path]:
    fig, axes = plots.figure(1)
    plots.against_peer(axes[0], summary["rows"], "mlx_vlm_server", "mlx_vlm.server",
                       "tokens/s (half image, half text)", "vision")
    return plots.save(fig, out)
