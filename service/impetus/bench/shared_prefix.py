"""`impetus bench --scenario shared-prefix`: N requests with one long system
prompt, sent together, as a team's agents send them.

Each request has the same ~`prompt_tokens` system prompt (new for each run
and level: a random tag opens it, so nothing is cached before) and its own
question. Sent together to, one server at a time, on the same float32
weights, directly on loopback (the peer benchmark's setup):

- impetus: the fair scheduler, sharing a prefix between requests in flight;
- impetus-fifo: IMPETUS_SCHEDULER=fifo and IMPETUS_SHARE_PREFIX_IN_FLIGHT=
  false, the baseline the issue names (each request prefills it again);
- mlx_lm.server, the peer.

Reported per N: TTFT p50/p95, total time, and for impetus the engine's
prefilled-token counter (target: total prefill work ~ one prefix plus the
questions) and prefixes shared. Target: TTFT p50 at N=8 >= 4x lower than
mlx_lm.server's.
"""

from __future__ import annotations

import secrets
import threading
from pathlib import Path

from impetus.bench import plots
from impetus.bench.peer import float32_copy, start_peer
from impetus.bench.traffic import StreamResult, error_counts, percentile, run_together, stream_chat
from impetus.server.process import free_port, start_server, stop_server

QUESTIONS = ["What is the first rule?", "Summarize rule 3.", "Which rule mentions tides?", "Name rule 10.",
             "What does rule 7 forbid?", "Is rule 2 strict?", "Quote rule 5.", "How many rules are there?"]


def system_prompt(tokenizer, tokens: int) -> str:
    """A new system prompt of about `tokens` tokens: a random tag first."""
    rules, text = [], f"Session {secrets.token_hex(8)}. You are the harbour's assistant. Rules:"
    i = 0
    while len(tokenizer.encode(text)) < tokens:
        rules = [f" Rule {i + k}: keep boat {i + k} moored at berth {(i + k) * 7 % 97} and log the tide at "
                 f"{(i + k) % 24}:00." for k in range(20)]
        text += "".join(rules)
        i += 20
    return text


def _status(http, url: str) -> dict:
    return http.get(f"{url}/v1/status", timeout=30).json()["engines"][0]


def measure(url: str, model: str, n: int, system: str, max_tokens: int, ours: bool) -> dict:
    import httpx

    results: list[StreamResult] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        body = {"model": model, "temperature": 0, "max_tokens": max_tokens,
                "messages": [{"role": "system", "content": system},
                             {"role": "user", "content": f"({i}) {QUESTIONS[i % len(QUESTIONS)]}"}]}
        with httpx.Client(timeout=httpx.Timeout(1800, connect=30)) as http:
            result = stream_chat(http, f"{url}/v1/chat/completions", body)
        with lock:
            results.append(result)

    with httpx.Client() as http:
        before = _status(http, url) if ours else None
    wall = run_together(client, n)
    ttfts = [r.ttft for r in results if r.ok and r.ttft is not None]
    row = {"n": n, "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95), "total_s": wall,
           "errors": error_counts(results)}
    if ours:
        with httpx.Client() as http:
            after = _status(http, url)
        for counter in ("prefilled_tokens", "cached_prompt_tokens", "prompt_tokens", "shared_prefixes",
                        "prefix_points"):
            row[counter] = after[counter] - before[counter]
    return row


def run(settings, levels: list[int], prompt_tokens: int, max_tokens: int, work: Path, progress,
        servers: tuple[str, ...] = ("impetus", "impetus-fifo", "mlx_lm.server")) -> dict:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from impetus.models import store

    source = store.resolve_model(settings.model, settings.models_dir, progress=progress)
    folder = float32_copy(source, work / f"{source.name}-float32")
    tokenizer = load_tokenizer(folder)
    series = {}
    for name in servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        if name == "mlx_lm.server":
            process, model = start_peer(folder, port, work / "peer.log"), "default_model"
        else:
            env = {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_MODEL": str(folder),
                   "IMPETUS_MAX_QUEUE": str(max(levels) + 16)}
            if name == "impetus-fifo":
                env |= {"IMPETUS_SCHEDULER": "fifo", "IMPETUS_SHARE_PREFIX_IN_FLIGHT": "false"}
            process, model = start_server(port, work / f"{name}.log", env), folder.name
        try:
            measure(url, model, 1, "Warm-up.", 2, False)
            rows = []
            for n in levels:
                system = system_prompt(tokenizer, prompt_tokens)
                row = measure(url, model, n, system, max_tokens, name != "mlx_lm.server")
                rows.append(row)
                extra = (f"; prefilled {row['prefilled_tokens']} of {row['prompt_tokens']} prompt tokens, "
                         f"{row['shared_prefixes']} prefixes shared, {row['prefix_points']} kept at points"
                         ) if "prefilled_tokens" in row else ""
                progress(f"  {name:<14} N={n:<3} TTFT p50 {row['ttft_p50_s']:.1f} s p95 {row['ttft_p95_s']:.1f} s, "
                         f"total {row['total_s']:.1f} s, errors {row['errors']}{extra}")
            series[name] = rows
        finally:
            stop_server(process)
    summary = {"scenario": "shared-prefix", "model": settings.model, "prompt_tokens": prompt_tokens,
               "max_tokens": max_tokens, "series": series}
    if "impetus" in series and "mlx_lm.server" in series:
        summary["ttft_p50_vs_mlx_lm_server"] = {
            str(a["n"]): b["ttft_p50_s"] / a["ttft_p50_s"] if a["ttft_p50_s"] else None
            for a, b in zip(series["impetus"], series["mlx_lm.server"])}
    return summary


def plot(summary: dict, out: Path) -> list[Path]:
    fig, (ax,) = plots.figure(1)
    for name, rows in summary["series"].items():
        xs = [row["n"] for row in rows]
        ax.plot(xs, [row["ttft_p50_s"] for row in rows], "o-", label=name)
    plots.concurrency_axis(ax, xs, "TTFT p50 (s)", f"one ~{summary['prompt_tokens']}-token system prompt",
                           log_y=True)
    return plots.save(fig, out)
