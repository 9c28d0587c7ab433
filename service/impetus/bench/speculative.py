"""`impetus bench --scenario speculative`: prompt lookup speculation off and
on, and `mlx_lm.server`, on the same float32 weights, in one run.

Two workloads, greedy, each request its own prompt:
- editing: a ~400-token Python file (a different variant per request) and
  the instruction to repeat it exactly, the shape of a coding agent's "give
  me the file back with this change"; the model copies it, so most of the
  answer can be guessed from the prompt;
- prediction: the same, with the file also passed as OpenAI's `prediction`
  (mlx_lm.server ignores the field);
- open-ended: a short story on a different topic per request, where little
  can be guessed, to show what speculation costs when it does not help.

Each server runs alone on loopback (no nginx, no keys). For the editing
workload the text of every answer is compared with speculation off: it must
be the same. Acceptance comes from the engine's own counters (/v1/status).
"""

from __future__ import annotations

import threading
from pathlib import Path

from impetus.bench import plots
from impetus.bench.peer import float32_copy, start_peer
from impetus.bench.traffic import StreamResult, error_counts, percentile, run_together, stream_chat
from impetus.server.process import free_port, start_server, stop_server

FUNCTIONS = [
    ('moving_average', 'values, window', 'The mean of each run of `window` values.',
     ['if window <= 0:', '    raise ValueError("window must be positive")', 'totals, running = [], 0.0',
      'for index, value in enumerate(values):', '    running += value', '    if index >= window:',
      '        running -= values[index - window]', '    if index >= window - 1:',
      '        totals.append(running / window)', 'return totals']),
    ('parse_duration', 'text', 'Seconds in a duration such as "1h30m" or "45s".',
     ['units = {"h": 3600, "m": 60, "s": 1}', 'total, number = 0, ""', 'for char in text.strip():',
      '    if char.isdigit():', '        number += char', '    elif char in units and number:',
      '        total += int(number) * units[char]', '        number = ""', '    else:',
      '        raise ValueError(f"not a duration: {text!r}")', 'return total']),
    ('chunks', 'items, size', 'The items in lists of at most `size`.',
     ['if size < 1:', '    raise ValueError("size must be at least 1")', 'batch = []', 'for item in items:',
      '    batch.append(item)', '    if len(batch) == size:', '        yield batch', '        batch = []',
      'if batch:', '    yield batch']),
    ('word_counts', 'text', 'How often each word occurs, most frequent first.',
     ['counts = {}', 'for word in text.lower().split():', '    word = word.strip(".,;:!?\\"\'()")',
      '    if word:', '        counts[word] = counts.get(word, 0) + 1',
      'return sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))']),
]
TOPICS = ["a lighthouse", "a robot", "a comet", "a library", "a desert", "a castle", "a river", "a storm",
          "a garden", "a train", "a forest", "a city at night", "a mountain", "the ocean", "a market", "a bridge"]


def source_file(variant: int) -> str:
    """A ~400-token Python file; `variant` renames it so no two prompts are one."""
    parts = [f'"""Small helpers, module {variant}."""\n']
    for name, args, doc, body in FUNCTIONS:
        lines = "\n".join(f"    {line}" for line in body)
        parts.append(f'def {name}_{variant}({args}):\n    """{doc}"""\n{lines}\n')
    return "\n\n".join(parts)


COPY_INSTRUCTION = "You repeat the user's text exactly, with no other words."


def editing_messages(variant: int) -> list[dict]:
    """The file as the user's message, the instruction as the system's: the
    135M default model then gives the file back (asked in the user's message
    it explains the code instead)."""
    return [{"role": "system", "content": COPY_INSTRUCTION}, {"role": "user", "content": source_file(variant)}]


def story_messages(variant: int) -> list[dict]:
    return [{"role": "user", "content": f"({variant}) Write a short story about {TOPICS[variant % len(TOPICS)]}."}]


def measure(url: str, model: str, workload: str, concurrency: int, max_tokens: int, status=None) -> dict:
    import httpx

    results: dict[int, StreamResult] = {}
    texts: dict[int, str] = {}
    lock = threading.Lock()
    make = story_messages if workload == "open-ended" else editing_messages
    before = status() if status else None

    def client(index: int) -> None:
        variant = concurrency * 100 + index + (50 if workload == "prediction" else 0)  # no prompt cached from another row
        body = {"model": model, "messages": make(variant), "temperature": 0, "max_tokens": max_tokens}
        if workload == "prediction":  # the file is the client's expected output too
            body["prediction"] = {"type": "content", "content": source_file(variant)}
        with httpx.Client(timeout=httpx.Timeout(900, connect=30)) as http:
            result = stream_chat(http, f"{url}/v1/chat/completions", body)
        with lock:
            results[index] = result
            texts[index] = result.text

    wall = run_together(client, concurrency)
    ok = [r for r in results.values() if r.ok]
    tokens = sum(r.tokens for r in ok)
    # Decode speed per stream: tokens after the first over the time since the first.
    streams = [(r.tokens - 1) / (r.end - r.first) for r in ok if r.first and r.tokens > 1 and r.end > r.first]
    row = {"workload": workload, "concurrency": concurrency, "requests": len(results), "tokens": tokens,
           "wall_s": wall, "tokens_per_s": tokens / wall, "stream_tokens_per_s_p50": percentile(streams, 50),
           "ttft_p50_s": percentile([r.ttft for r in ok if r.ttft is not None], 50),
           "errors": error_counts(list(results.values())), "texts": [texts.get(i) for i in range(concurrency)]}
    if status:
        after = status()
        proposed = after["spec_proposed_tokens"] - before["spec_proposed_tokens"]
        accepted = after["spec_accepted_tokens"] - before["spec_accepted_tokens"]
        steps = after["spec_steps"] - before["spec_steps"]
        row.update(proposed=proposed, accepted=accepted, acceptance_rate=accepted / proposed if proposed else None,
                   mean_accepted_per_step=accepted / steps if steps else None)
    return row


# The workloads and their levels: editing (also with the file as `prediction`) at 1
# and 4 streams, open-ended at 1, 4 and 16.
PLAN = (("editing", 1), ("editing", 4), ("prediction", 1), ("prediction", 4), ("open-ended", 1), ("open-ended", 4),
        ("open-ended", 16))


def _series(name: str, start, url: str, model: str, max_tokens: dict, plan, progress, ours: bool) -> list:
    import httpx

    process = start()
    status = (lambda: httpx.get(f"{url}/v1/status", timeout=30).json()["engines"][0]) if ours else None
    try:
        measure(url, model, "open-ended", 1, 4)  # warm-up
        rows = []
        for workload, level in plan:
            row = measure(url, model, workload, level, max_tokens[workload], status)
            rows.append(row)
            accepted = "" if row.get("acceptance_rate") is None else \
                f"  accepted {row['acceptance_rate']:.0%}, {row['mean_accepted_per_step']:.1f} a step"
            progress(f"    {name:<18} {workload:<10} c={level:<3} {row['tokens_per_s']:6.1f} tok/s "
                     f"(a stream {row['stream_tokens_per_s_p50'] or 0:5.1f}){accepted}  errors {row['errors']}")
        return rows
    finally:
        stop_server(process)


def run(settings, max_tokens: int, work: Path, progress, plan=PLAN) -> dict:
    from impetus.models import store

    source = store.resolve_model(settings.model, settings.models_dir, progress=progress)
    folder = float32_copy(source, work / f"{source.name}-float32")
    limits = {"editing": max(max_tokens, 600), "prediction": max(max_tokens, 600), "open-ended": max_tokens}
    series = {}
    for name, mode in (("impetus", "off"), ("impetus-speculative", "ngram")):
        port = free_port()
        env = {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": str(folder),
               "IMPETUS_SPECULATIVE": mode, "IMPETUS_MAX_QUEUE": "64"}
        series[name] = _series(name, lambda: start_server(port, work / f"{name}.log", env),
                               f"http://127.0.0.1:{port}", folder.name, limits, plan, progress, ours=True)
    peer_port = free_port()
    series["mlx_lm.server"] = _series("mlx_lm.server", lambda: start_peer(folder, peer_port, work / "peer.log"),
                                      f"http://127.0.0.1:{peer_port}", "default_model", limits, plan, progress,
                                      ours=False)
    ratios = []
    for off, on, peer in zip(series["impetus"], series["impetus-speculative"], series["mlx_lm.server"]):
        ratios.append({
            "workload": off["workload"], "concurrency": off["concurrency"],
            "vs_off": on["tokens_per_s"] / off["tokens_per_s"] if off["tokens_per_s"] else None,
            "vs_mlx_lm_server": on["tokens_per_s"] / peer["tokens_per_s"] if peer["tokens_per_s"] else None,
            "same_text_as_off": on["texts"] == off["texts"] if off["workload"] != "open-ended" else None,
        })
    for rows in series.values():
        for row in rows:
            row.pop("texts")
    return {"scenario": "speculative", "model": settings.model, "weights": "float32",
            "max_tokens": limits, "series": series, "ratios": ratios}


def plot(summary: dict, out: Path) -> list[Path]:
    fig, axes = plots.figure(2)
    for ax, workload in zip(axes, ("editing", "open-ended")):  # prediction: beside editing in the table
        for name, rows in summary["series"].items():
            points = [(r["concurrency"], r["tokens_per_s"]) for r in rows if r["workload"] == workload]
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
        xs = sorted({r["concurrency"] for r in summary["series"]["impetus"] if r["workload"] == workload})
        plots.concurrency_axis(ax, xs, "generated tokens/s", workload)
    return plots.save(fig, out)
