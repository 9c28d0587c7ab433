"""`impetus bench --scenario batch`: a batch in idle capacity beside a person, and the same work as a client loop.

On one stack (nginx, a key each, the default model), in this order:

1. **Solo**: the interactive key asks `--probes` short questions, one at a
   time, streamed: its time to first token alone.
2. **Client loop**: `--requests` short chat completions fired by a saturating
   client (`--concurrency` at once, as a script that floods the server does),
   with nobody else on the machine: the baseline throughput.
3. **Batch**: the same number of requests (other prompts, so no answer comes
   from the cache) as one batch (api.batch_runner: batch priority), while the
   interactive key asks a question every `--probe-interval` seconds.

Reported: the interactive key's TTFT p50 beside the batch against solo
(target <= 1.5x) and the batch's requests per second against the client
loop's (target >= 0.9x). Answers are a few tokens: what is measured is the
scheduling. CPU figures on a CPU.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from impetus.bench import plots
from impetus.bench.stack import gateway_stack
from impetus.bench.traffic import percentile, stream_chat


def _chat(model: str, text: str, max_tokens: int) -> dict:
    return {"model": model, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": text}]}


def _probe(http, url: str, model: str, key: str, number: int) -> float | None:
    result = stream_chat(http, f"{url}/v1/chat/completions", _chat(model, f"Name a city, please ({number}).", 8),
                         {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"})
    return result.ttft if result.ok else None


def client_loop(url: str, model: str, key: str, requests: int, concurrency: int, max_tokens: int) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {key}", "Cache-Control": "no-cache"}
    errors = []

    def one(number: int) -> None:
        with httpx.Client(timeout=600) as http:
            answer = http.post(f"{url}/v1/chat/completions", headers=headers,
                               json=_chat(model, f"Loop request {number}: name a colour.", max_tokens))
            if answer.status_code != 200:
                errors.append(answer.status_code)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - started
    return {"requests": requests, "seconds": seconds, "per_s": requests / seconds, "errors": len(errors)}


def batch_beside_a_person(url: str, model: str, batch_key: str, person: str, requests: int, max_tokens: int,
                          interval: float) -> dict:
    import httpx
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=batch_key, max_retries=2, timeout=120)
    lines = [{"custom_id": f"b-{n}", "method": "POST", "url": "/v1/chat/completions",
              "body": _chat(model, f"Batch request {n}: name a colour.", max_tokens)} for n in range(requests)]
    upload = client.files.create(file=("batch.jsonl", io.BytesIO("\n".join(json.dumps(x) for x in lines).encode())),
                                 purpose="batch")
    ttfts: list[float] = []
    done = threading.Event()

    def person_asks() -> None:
        with httpx.Client(timeout=120) as http:
            number = 1000
            while not done.is_set():
                ttft = _probe(http, url, model, person, number)
                if ttft is not None:
                    ttfts.append(ttft)
                number += 1
                done.wait(interval)

    started = time.perf_counter()
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    asking = threading.Thread(target=person_asks, daemon=True)
    asking.start()
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    seconds = time.perf_counter() - started
    done.set()
    asking.join(130)
    return {"requests": requests, "seconds": seconds, "per_s": requests / seconds, "status": batch.status,
            "completed": batch.request_counts.completed, "failed": batch.request_counts.failed,
            "probe_ttfts_s": ttfts, "probe_ttft_p50_s": percentile(ttfts, 50), "probes": len(ttfts)}


def run(settings, requests: int, concurrency: int, max_tokens: int, probes: int, interval: float, work: Path,
        progress) -> dict:
    import httpx

    data = work / "data"
    (data / "models").mkdir(parents=True, exist_ok=True)
    model = settings.model
    if (settings.models_dir / model).exists():
        os.symlink(settings.models_dir / model, data / "models" / model)
    env = {"IMPETUS_DATA_DIR": str(data), "IMPETUS_MODEL": model}
    with gateway_stack(work / "impetus", env) as stack:
        person, _ = stack.keys.create("person", rpm=1_000_000, tpm=1_000_000_000)
        batcher, _ = stack.keys.create("overnight", rpm=1_000_000, tpm=1_000_000_000)
        with httpx.Client(timeout=120) as http:
            _probe(http, stack.url, model, person, -1)  # warm-up
            solo = [t for t in (_probe(http, stack.url, model, person, n) for n in range(probes)) if t is not None]
        progress(f"  solo TTFT p50 {percentile(solo, 50) * 1000:.0f} ms over {len(solo)} questions")
        loop = client_loop(stack.url, model, batcher, requests, concurrency, max_tokens)
        progress(f"  client loop: {requests} requests in {loop['seconds']:.1f} s ({loop['per_s']:.2f}/s)")
        beside = batch_beside_a_person(stack.url, model, batcher, person, requests, max_tokens, interval)
        progress(f"  batch: {requests} requests in {beside['seconds']:.1f} s ({beside['per_s']:.2f}/s), "
                 f"{beside['status']}; the person's TTFT p50 {(beside['probe_ttft_p50_s'] or 0) * 1000:.0f} ms "
                 f"over {beside['probes']} questions")
    solo_p50 = percentile(solo, 50)
    return {"scenario": "batch", "model": model, "requests": requests, "loop_concurrency": concurrency,
            "max_tokens": max_tokens, "probe_interval_s": interval, "solo_ttfts_s": solo, "solo_ttft_p50_s": solo_p50,
            "client_loop": loop, "batch": beside,
            "ttft_ratio": (beside["probe_ttft_p50_s"] / solo_p50) if beside["probe_ttft_p50_s"] and solo_p50 else None,
            "throughput_ratio": beside["per_s"] / loop["per_s"]}


def plot(result: dict, out: Path) -> list[Path]:
    fig, (left, right) = plots.figure(2)
    left.bar(["client loop", "batch"], [result["client_loop"]["per_s"], result["batch"]["per_s"]])
    left.set(ylabel="requests per second", title=f"{result['requests']} short requests")
    right.plot(range(1, len(result["solo_ttfts_s"]) + 1), result["solo_ttfts_s"], "o-", label="alone")
    right.plot(range(1, len(result["batch"]["probe_ttfts_s"]) + 1), result["batch"]["probe_ttfts_s"], "s-",
               label="beside the batch")
    right.set(xlabel="question", ylabel="time to first token (s)", title="the interactive key")
    right.legend()
    right.grid(alpha=0.3)
    return plots.save(fig, out)
