"""The team benchmark's people (bench.team): what each kind of traffic sends and
what it records, the same requests to Impetus and to mlx_lm.server.

Every request becomes a row: its kind ("agent", "chat", "autocomplete",
"batch"), who sent it and which turn, whether it was answered, its time to
first token (streamed kinds), its answer's tokens and when it ran (seconds
from the mix's start). Whether a row met its target is decided by
bench.team.score, not here. Answers are counted in tokens with the chat
model's own tokenizer, the same way for both servers (mlx_lm.server's streams
carry no usage for every kind). Never raises for a failed request: a row with
its error.
"""

from __future__ import annotations

import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from impetus.bench import agents, autocomplete
from impetus.bench.traffic import stream_chat

SYSTEM = "You are a helpful assistant for a small software team. Answer briefly."
QUESTIONS = ["How do I undo the last git commit but keep the changes?", "What is a Python context manager?",
             "Explain what a race condition is.", "How should we name our release branches?",
             "What does HTTP status 429 mean?", "Write a haiku about code review.",
             "What is the difference between a list and a tuple?", "How do I profile a slow SQL query?"]
FOLLOW_UPS = ["Can you give an example?", "Why is that?", "And what should I avoid?", "Summarise that in one line.",
              "Thanks. One more detail, please.", "How would you test it?"]


class Rows:
    """The rows of one mix, from its threads, with times from its start."""

    def __init__(self, count_tokens):
        self.rows: list[dict] = []
        self.count = count_tokens
        self.started = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, kind: str, who: int, turn: int, ok: bool, start: float, end: float, ttft_s: float | None = None,
            text: str = "", tokens: int | None = None, error: str | None = None) -> None:
        row = {"kind": kind, "who": who, "turn": turn, "ok": ok, "ttft_s": ttft_s, "error": error,
               "tokens": tokens if tokens is not None else (self.count(text) if text else 0),
               "start_s": start - self.started, "end_s": end - self.started}
        with self._lock:
            self.rows.append(row)


def chat_user(url: str, model: str, headers: dict, who: int, turns: int, think_s: float, max_tokens: int,
              rows: Rows, until: float | None = None) -> None:
    """A person's conversation: a question, then follow-ups on the answers, `think_s` apart
    (up to `turns` turns, none started after `until`)."""
    import httpx

    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": QUESTIONS[who % len(QUESTIONS)]}]
    with httpx.Client(timeout=httpx.Timeout(1200, connect=30)) as http:
        for turn in range(turns):
            if until is not None and time.perf_counter() > until:
                return
            result = stream_chat(http, f"{url}/v1/chat/completions",
                                 {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0},
                                 headers)
            rows.add("chat", who, turn, result.ok, result.start, result.end, result.ttft, result.text,
                     error=result.error)
            if not result.ok:
                return
            messages += [{"role": "assistant", "content": result.text},
                         {"role": "user", "content": FOLLOW_UPS[(who + turn) % len(FOLLOW_UPS)]}]
            time.sleep(think_s)


def editor_file(who: int) -> str:
    """Editor `who`'s file: the autocomplete scenario's, its names its own."""
    return autocomplete.source_file().replace("step_", f"part{who}_")


def editor(url: str, model: str, headers: dict, who: int, keystrokes: int, pause_s: float, max_tokens: int,
           rows: Rows, fim=None) -> None:
    """A person typing through a file: `keystrokes` pauses, each a FIM request that the next supersedes."""
    strokes = autocomplete.type_through(f"{url}/v1/completions", model, headers, editor_file(who), keystrokes,
                                        max_tokens, pause=pause_s, fim=fim)
    for turn, s in enumerate(strokes):
        ok = s.first is not None and not s.error
        rows.add("autocomplete", who, turn, ok, s.start, s.end or s.start, s.ttft,
                 error=s.error or ("superseded" if s.superseded else None if ok else "no text"))


def agent_sessions(url: str, model: str, keys: list[dict] | None, n: int, turns: int, gap_s: float,
                   max_tokens: int, peer: bool, rows: Rows) -> None:
    """N Claude Code sessions (bench.agents' shape: its system blocks and 21 tools, each person's own
    billing header, paths and questions), `turns` turns each, starting `gap_s` apart."""
    bodies = [agents.first_request(i, model, max_tokens) for i in range(n)]
    for row in agents.sessions(url, bodies, turns, gap_s, peer, "team", keys):
        rows.add("agent", row["person"], row["turn"], "error" not in row, row["start"], row["end"],
                 row.get("ttft_s"), row.get("text", ""), error=row.get("error"))


def batch_lines(model: str, requests: int, max_tokens: int) -> list[dict]:
    return [{"custom_id": f"req-{n}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": model, "max_tokens": max_tokens, "temperature": 0,
                      "messages": [{"role": "user", "content": f"Ticket {n}: label it bug, feature or question."}]}}
            for n in range(requests)]


def batch_api(url: str, model: str, key: str, requests: int, max_tokens: int, rows: Rows) -> dict:
    """The batch through OpenAI's Batch API (Impetus): upload, create, poll, download."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=3, timeout=300)
    lines = batch_lines(model, requests, max_tokens)
    upload = client.files.create(file=("tickets.jsonl", io.BytesIO("\n".join(json.dumps(x) for x in lines).encode())),
                                 purpose="batch")
    start = time.perf_counter()
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(1.0)
        batch = client.batches.retrieve(batch.id)
    end = time.perf_counter()
    answers = {}
    if batch.output_file_id:
        for line in client.files.content(batch.output_file_id).text.splitlines():
            row = json.loads(line)
            answers[row["custom_id"]] = row["response"]
    for n, line in enumerate(lines):
        response = answers.get(line["custom_id"])
        ok = bool(response) and response["status_code"] == 200
        tokens = response["body"]["usage"]["completion_tokens"] if ok else 0
        rows.add("batch", 0, n, ok, start, end, tokens=tokens, error=None if ok else "not answered")
    return {"status": batch.status, "seconds": end - start}


def batch_loop(url: str, model: str, requests: int, max_tokens: int, concurrency: int, rows: Rows) -> dict:
    """The same batch as a client loop that saturates the server (mlx_lm.server has no Batch API)."""
    import httpx

    def one(n_line: tuple[int, dict]) -> None:
        n, line = n_line
        start = time.perf_counter()
        try:
            with httpx.Client(timeout=1200) as http:
                answer = http.post(url + line["url"], json=line["body"])
            ok = answer.status_code == 200
            tokens = answer.json()["usage"]["completion_tokens"] if ok else 0
            rows.add("batch", 0, n, ok, start, time.perf_counter(), tokens=tokens,
                     error=None if ok else f"HTTP {answer.status_code}")
        except Exception as error:  # a row, never a crash of the run
            rows.add("batch", 0, n, False, start, time.perf_counter(), error=type(error).__name__)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, enumerate(batch_lines(model, requests, max_tokens))))
    return {"status": "completed", "seconds": time.perf_counter() - start}
