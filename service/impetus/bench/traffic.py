"""What the load, peer and soak benchmarks share: one timed streaming request,
percentiles, and what the processes under test hold (memory, open files).

Every request is a real HTTP stream over loopback; each records its status,
time to first content token, tokens and, for refusals, the server's
Retry-After, so a client can wait as OpenAI's own client does.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from dataclasses import dataclass


@dataclass
class StreamResult:
    status: int | None = None  # HTTP status; None when the connection failed
    error: str | None = None  # None, "429", "503", "HTTP 400", "ReadTimeout", ...
    cache: str | None = None  # x-impetus-cache header
    host: str | None = None  # x-impetus-host: which host of a cluster answered
    retry_after: float | None = None
    start: float = 0.0
    first: float | None = None  # first content token
    end: float = 0.0
    tokens: int = 0  # completion tokens as the usage chunk counts them
    text: str = ""  # the answer's content, as streamed

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.start


def stream_chat(http, url: str, body: dict, headers: dict | None = None) -> StreamResult:
    """POST one streaming chat request and read it to the end. Never raises:
    a failure is a result with its kind in `error`."""
    result = StreamResult(start=time.perf_counter())
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    try:
        with http.stream("POST", url, json=body, headers=headers or {}) as response:
            result.status = response.status_code
            result.cache = response.headers.get("x-impetus-cache")
            result.host = response.headers.get("x-impetus-host")
            if response.status_code != 200:
                response.read()
                result.error = str(response.status_code) if response.status_code in (429, 503) \
                    else f"HTTP {response.status_code}"
                retry = response.headers.get("retry-after")
                result.retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
                return result
            done = False
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                content = chunk["choices"][0].get("delta", {}).get("content") if chunk.get("choices") else None
                if content:
                    result.first = result.first or time.perf_counter()
                    result.text += content
            if not done:
                result.error = "incomplete stream"
    except Exception as error:  # counted by kind, never raised: one failure must not end a run
        result.error = type(error).__name__
    finally:
        result.end = time.perf_counter()
    return result


def run_together(target, n: int) -> float:
    """Run target(0) .. target(n - 1) in n threads at once; the seconds until all are done."""
    import threading

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def error_counts(results: list[StreamResult]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        if r.error:
            counts[r.error] = counts.get(r.error, 0) + 1
    return counts


@dataclass
class ProcessUse:
    rss_bytes: int
    open_files: int | None  # None where /proc is not there (macOS)


def _children() -> dict[int, list[int]]:
    # `ps` answers on Linux and macOS alike.
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    tree: dict[int, list[int]] = {}
    for line in out.splitlines():
        pid, ppid = (int(x) for x in line.split())
        tree.setdefault(ppid, []).append(pid)
    return tree


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Gunicorn's master and its workers)."""
    tree, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def process_use(pids: list[int]) -> ProcessUse:
    rss, files, proc = 0, 0, os.path.isdir("/proc/self/fd")
    listing = subprocess.run(["ps", "-o", "rss=", "-p", ",".join(str(p) for p in pids)],
                             capture_output=True, text=True).stdout
    rss = sum(int(x) for x in listing.split()) * 1024
    if proc:
        for pid in pids:
            try:
                files += len(os.listdir(f"/proc/{pid}/fd"))
            except OSError:  # exited meanwhile
                pass
    return ProcessUse(rss, files if proc else None)


class Background:
    """A thread that runs `_run` while a `with` block runs; `_run` loops until
    `self._stop` is set."""

    def __init__(self):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class Sampler(Background):
    """Samples the processes' memory and open files every `interval` seconds,
    for a benchmark level or a soak. `roots`: name -> root pid (its
    descendants are counted with it)."""

    def __init__(self, roots: dict[str, int], interval: float = 1.0):
        super().__init__()
        self.roots = roots
        self.interval = interval
        self.samples: list[dict] = []
        self._started = time.perf_counter()

    def sample(self) -> dict:
        row: dict = {"t": time.perf_counter() - self._started}
        for name, pid in self.roots.items():
            use = process_use(process_tree(pid))
            row[f"{name}_rss_bytes"] = use.rss_bytes
            row[f"{name}_open_files"] = use.open_files
        return row

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def peak(self, column: str) -> int | None:
        values = [s[column] for s in self.samples if s.get(column) is not None]
        return max(values) if values else None
