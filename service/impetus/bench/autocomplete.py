"""`impetus bench --scenario autocomplete`: an editor's autocomplete on a code model.

A simulated typist moves through a 300-line file. At each pause it asks for
the middle between the text before its cursor and after it: `/v1/completions`
with `suffix`, streamed, 16 tokens. llama.vim sends 256 lines before and 64
after; the random coder's byte-level vocabulary has no merges (a token a
character, ~3.5 times a real code tokenizer's count), so it is sent 72 and 18,
about the tokens a real model reads. It does not wait: the next pause's request supersedes
the last, whose connection it closes, as editors do. Meanwhile another key
floods the model with long chat answers.

Reported per server: time to first token p50/p95 of the requests that got
one before they were superseded, how many were superseded, and (Impetus)
the prompt tokens each computed rather than read from the prefix cache.
The baseline, in the same run on the same GGUF: llama.cpp's server
(llama-cpp-python's `llama_cpp.server`, whose /v1/completions takes
`suffix`), where it is installed (`--llama-cpp-python PATH`). Without a
`--model` GGUF with FIM tokens, a random Qwen2-shaped coder is written
(`bench.random_gguf.write_coder`): timings only, its answers mean nothing.
Figures from a CPU are CPU figures.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from impetus.bench import plots
from impetus.bench.stack import gateway_stack
from impetus.bench.traffic import percentile, stream_chat
from impetus.server.process import free_port

PAUSE_S = 0.5  # between a typist's requests
SIZE = (256, 4, 2, 768, 4)  # the random coder: hidden, heads, KV heads, FFN, layers (~3.5 M parameters)
LINES_BEFORE, LINES_AFTER = 72, 18


def source_file(lines: int = 300) -> str:
    """A deterministic Python file of `lines` lines: small functions."""
    out = []
    for i in range(lines // 6 + 1):
        out += [f"def step_{i}(values, scale={i % 7 + 1}):", f"    total = {i}", "    for value in values:",
                f"        total += value * scale - {i % 3}", "    return total", ""]
    return "\n".join(out[:lines]) + "\n"


def pauses(text: str, count: int) -> list[int]:
    """Cursor positions of a typist's pauses: every few characters, from the file's middle on."""
    start = len(text) // 3
    return [start + 23 * k for k in range(count)]


@dataclass
class Keystroke:
    start: float
    first: float | None = None
    end: float | None = None
    superseded: bool = False
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    error: str | None = None  # an HTTP status or an exception's name (not a supersession)

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start


@dataclass
class Run:
    server: str
    strokes: list[Keystroke] = field(default_factory=list)
    flood_tokens: int = 0  # as the usage chunks count them (llama-cpp-python's streams have none)
    flood_answers: int = 0  # flood requests completed
    wall_s: float = 0.0


class Supersede:
    """The next keystroke's signal to the last request: set, and its socket
    shut at once (as an editor drops it), even before any byte came back (a
    stream's headers leave with its first token, after the prefill)."""

    def __init__(self):
        self.event, self.sock = threading.Event(), None

    def is_set(self) -> bool:
        return self.event.is_set()

    def set(self) -> None:
        self.event.set()
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the read blocked in the request's thread
            except OSError:
                pass


def _ask(url: str, body: dict, headers: dict, stroke: Keystroke, cancel: Supersede) -> None:
    """One autocomplete request, streamed until it ends or the next keystroke supersedes it."""
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=600)
    try:
        connection.connect()
        cancel.sock = connection.sock
        if cancel.is_set():
            stroke.superseded = True
            return
        connection.request("POST", where.path, json.dumps(body), {**headers, "Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            stroke.error = f"HTTP {response.status}"
            return
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stroke.first = stroke.first or time.perf_counter()
            usage = chunk.get("usage")
            if usage:
                stroke.prompt_tokens = usage.get("prompt_tokens")
                stroke.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    except Exception as error:
        stroke.error = None if cancel.is_set() else type(error).__name__
    finally:
        stroke.superseded = cancel.is_set() and stroke.end is None and stroke.first is None
        stroke.end = time.perf_counter()
        connection.close()


def request_body(model: str, before: str, after: str, max_tokens: int, fim=None) -> dict:
    """An editor's request at the cursor: `suffix` for a server that builds the
    FIM prompt (Impetus), or the prompt rendered by the client with `fim`'s
    markers (models.fim.FimFormat, prefix-suffix-middle) for one that does not
    (mlx_lm.server)."""
    prefix, suffix = "\n".join(before.split("\n")[-LINES_BEFORE:]), "\n".join(after.split("\n")[:LINES_AFTER])
    body = {"model": model, "prompt": prefix, "suffix": suffix, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    if fim is not None:
        del body["suffix"]
        body["prompt"] = f"{fim.prefix}{prefix}{fim.suffix}{suffix}{fim.middle}"
        body["stop"] = [m for m in (fim.pad, fim.file_sep) if m]
    return body


def type_through(url: str, model: str, headers: dict, text: str, count: int, max_tokens: int,
                 pause: float = PAUSE_S, fim=None) -> list[Keystroke]:
    strokes, threads, cancel = [], [], None
    for cursor in pauses(text, count):
        if cancel is not None:
            cancel.set()  # the last request is superseded
        body = request_body(model, text[:cursor], text[cursor:], max_tokens, fim)
        stroke, cancel = Keystroke(time.perf_counter()), Supersede()
        thread = threading.Thread(target=_ask, args=(url, body, headers, stroke, cancel))
        thread.start()
        strokes.append(stroke)
        threads.append(thread)
        time.sleep(pause)
    for thread in threads:
        thread.join()
    return strokes


def _flood(url: str, model: str, headers: dict, stop: threading.Event, run: Run, streams: int) -> list:
    import httpx

    def one(i: int) -> None:
        with httpx.Client(timeout=httpx.Timeout(600, connect=30)) as http:
            while not stop.is_set():
                result = stream_chat(http, url, {"model": model, "max_tokens": 48, "temperature": 1.0, "messages": [
                    {"role": "user", "content": f"Flood {i}: write a long story about a harbour."}]}, headers)
                run.flood_tokens += result.tokens
                run.flood_answers += result.ok

    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    return threads


def measure(server: str, base: str, model: str, typist: dict, flood: dict, count: int, max_tokens: int,
            streams: int) -> Run:
    run, stop = Run(server), threading.Event()
    started = time.perf_counter()
    flooders = _flood(f"{base}/v1/chat/completions", model, flood, stop, run, streams) if streams else []
    time.sleep(1.0 if streams else 0)
    run.strokes = type_through(f"{base}/v1/completions", model, typist, source_file(), count, max_tokens)
    stop.set()
    for thread in flooders:
        thread.join()
    run.wall_s = time.perf_counter() - started
    return run


def summary(run: Run) -> dict:
    ttfts = [s.ttft for s in run.strokes if s.ttft is not None]
    computed = [s.prompt_tokens - (s.cached_tokens or 0) for s in run.strokes
                if s.prompt_tokens is not None and s.cached_tokens is not None]
    errors: dict[str, int] = {}
    for stroke in run.strokes:
        if stroke.error:
            errors[stroke.error] = errors.get(stroke.error, 0) + 1
    empty = sum(1 for s in run.strokes if s.first is None and not s.superseded and not s.error)
    return {"server": run.server, "requests": len(run.strokes), "answered": len(ttfts), "errors": errors,
            "empty": empty, "flood_answers": run.flood_answers,
            "superseded": sum(s.superseded for s in run.strokes), "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p95_s": percentile(ttfts, 95), "computed_prompt_tokens_mean": sum(computed) / len(computed)
            if computed else None, "prompt_tokens_mean": sum(s.prompt_tokens for s in run.strokes if s.prompt_tokens)
            / max(1, sum(1 for s in run.strokes if s.prompt_tokens)), "flood_tokens": run.flood_tokens,
            "wall_s": run.wall_s, "ttfts_s": ttfts}


def _gguf(model: str | None, work: Path, progress) -> Path:
    if model:
        return Path(model)
    from impetus.bench.random_gguf import write_coder

    progress(f"  writing a random coder GGUF {SIZE} (timings only)")
    return write_coder(work / "coder.gguf", "qwen", size=SIZE, context=8192)


def run(settings, model: str | None, count: int, max_tokens: int, streams: int, llama_cpp_python: str | None,
        work: Path, progress) -> dict:
    from impetus.models.gguf import import_gguf

    gguf = _gguf(model, work, progress)
    data = work / "data"
    import_gguf(gguf, data / "models", name="coder", options=_float_options())
    rows = []
    env = {"IMPETUS_DATA_DIR": str(data), "IMPETUS_MODEL": "coder", "IMPETUS_MAX_QUEUE": "64"}
    with gateway_stack(work / "impetus", env) as stack:
        typist, _ = stack.keys.create("editor", rpm=100_000, tpm=100_000_000, priority="batch",
                                      autocomplete_priority="interactive")
        flooder, _ = stack.keys.create("agent", rpm=100_000, tpm=100_000_000, priority="batch")
        measure("impetus", stack.url, "coder", {"Authorization": f"Bearer {typist}"}, {}, 2, 4, 0)  # warm-up
        rows.append(summary(measure("impetus", stack.url, "coder", {"Authorization": f"Bearer {typist}"},
                                    {"Authorization": f"Bearer {flooder}"}, count, max_tokens, streams)))
        _report(rows[-1], progress)
    if llama_cpp_python:
        with llama_cpp_server(llama_cpp_python, gguf, work) as base:
            measure("llama.cpp", base, "coder", {}, {}, 2, 4, 0)
            rows.append(summary(measure("llama.cpp", base, "coder", {}, {}, count, max_tokens, streams)))
            _report(rows[-1], progress)
    result = {"scenario": "autocomplete", "model": str(model or f"random coder {SIZE}"), "keystrokes": count,
              "max_tokens": max_tokens, "flood_streams": streams, "pause_s": PAUSE_S, "servers": rows}
    if len(rows) == 2 and rows[0]["ttft_p50_s"] and rows[1]["ttft_p50_s"]:
        result["ttft_p50_vs_llama_cpp"] = rows[1]["ttft_p50_s"] / rows[0]["ttft_p50_s"]
    return result


def _float_options():
    from impetus.models.gguf import Options

    return Options(dtype="float32")


def _report(row: dict, progress) -> None:
    def ms(value):
        return "-" if value is None else f"{value * 1000:.0f} ms"

    progress(f"  {row['server']:<9} TTFT p50 {ms(row['ttft_p50_s'])} p95 {ms(row['ttft_p95_s'])}, "
             f"{row['answered']}/{row['requests']} answered, {row['superseded']} superseded, errors "
             f"{row['errors']}, {row['empty']} ended with no text, computed prompt "
             f"tokens {row['computed_prompt_tokens_mean'] or '-'} of {row['prompt_tokens_mean']:.0f}, "
             f"flood {row['flood_answers']} answers ({row['flood_tokens']} tokens counted)")


class llama_cpp_server:
    """llama-cpp-python's server on the GGUF, from the Python that has it installed."""

    def __init__(self, python: str, gguf: Path, work: Path):
        self.python, self.gguf, self.work = python, gguf, work

    def __enter__(self) -> str:
        import httpx

        port = free_port()
        self.log = (self.work / "llama-cpp.log").open("w")
        self.process = subprocess.Popen([self.python, "-m", "llama_cpp.server", "--model", str(self.gguf),
                                         "--model_alias", "coder", "--port", str(port), "--n_ctx", "8192",
                                         "--host", "127.0.0.1"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    return f"http://127.0.0.1:{port}"
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError(f"llama.cpp's server did not start (see {self.log.name})")

    def __exit__(self, *exc):
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def plot(result: dict, out: Path) -> list[Path]:
    fig, (ax,) = plots.figure(1)
    for row in result["servers"]:
        ax.plot(range(1, len(row["ttfts_s"]) + 1), row["ttfts_s"], "o-", label=row["server"])
    ax.set(xlabel="keystroke pause (answered ones, in order)", ylabel="time to first token (s)", yscale="log",
           title=f"autocomplete beside {result['flood_streams']} flood streams")
    ax.grid(alpha=0.3)
    ax.legend()
    return plots.save(fig, out)
