"""`impetus bench --scenario team`: a compressed hour of a team, all at once on one server, against mlx_lm.server.

The people (bench.team_traffic), all starting together:
- `--sessions` (4) coding agents: bench.agents' Claude Code 2.1.332 shape
  (~20k tokens: 3 system blocks, 21 tools, each person's own paths, billing
  header and questions), 3 turns each, `--gap` seconds apart;
- `--chat-users` (6) people in conversations: a question, then follow-ups on
  the answers, 5 s of reading between turns, for `--duration` seconds;
- `--editors` (2) people typing in their own files (bench.autocomplete's
  typist), a fill-in-the-middle request at each 1 s pause, the next
  superseding the last, `--keystrokes` pauses each;
- one batch of `--requests` (500) short chat completions (label a ticket).

Models: Gemma 3 270M in float32 (32k tokens of context: room for Claude
Code's prompt) for the agents, the chat and the batch; for the editors the
random Qwen2 coder with FIM tokens of the autocomplete scenario (no shipped
model has FIM tokens; its answers mean nothing, its timings are real).

Servers, one after the other on the same weights (never both at once: they
would share the cores):
- impetus: the production path (Redis, nginx, a key per person), both models
  in one server; agents on /v1/messages, the batch through the Batch API,
  the editors with `suffix`;
- mlx_lm.server: one process per model (it serves one), on loopback; each
  kind sent the closest way it takes it: agents and chat as chat
  completions, the editors' FIM prompts rendered by the client, the batch
  as a client loop of 16 at once.

Before the mix each server answers one conversation and one typist alone
(other words, the same shapes). Targets (`score`): a chat turn's TTFT within
2x the same turn alone; a keystroke's within 3x the typist's alone p50 (one
superseded before its first token missed it); an agent's turn and a batch
line by being answered. Goodput: requests that met their target per minute
of the mix (its start to the last answer). Target: Impetus's >= 1.5x
mlx_lm.server's. CPU figures on a CPU.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from impetus.bench import plots
from impetus.bench.traffic import percentile

KINDS = ("agent", "chat", "autocomplete", "batch")
FACTORS = {"chat": 2.0, "autocomplete": 3.0}  # a streamed turn meets its target within this x alone
THINK_S, PAUSE_S, EDITORS_START_S = 5.0, 1.0, 15.0
ALONE_TURNS = 4


@dataclass
class Mix:
    sessions: int = 4
    agent_turns: int = 3
    gap_s: float = 2.0
    chat_users: int = 6
    duration_s: float = 240.0
    editors: int = 2
    keystrokes: int = 40
    requests: int = 500
    chat_tokens: int = 48
    agent_tokens: int = 16
    fim_tokens: int = 16
    batch_tokens: int = 8
    loop_concurrency: int = 16


@dataclass
class Face:
    """How one server takes each kind."""
    name: str
    chat_url: str
    coder_url: str
    chat_model: str
    coder_model: str
    headers: dict[str, dict]  # "agent-0", "chat-3", "editor-1" -> that person's key ({} without keys)
    batch_key: str | None  # None: the batch as a client loop
    fim: object | None = None  # models.fim.FimFormat: the client renders the FIM prompt
    peer: bool = False


def meets(row: dict, alone: dict) -> bool:
    """Whether a row met its kind's target. alone: {"chat": TTFT per turn, "autocomplete": p50 TTFT}."""
    if not row["ok"]:
        return False
    if row["kind"] == "chat":
        turns = alone.get("chat") or []
        solo = turns[min(row["turn"], len(turns) - 1)] if turns else None
        return solo is not None and row["ttft_s"] is not None and row["ttft_s"] <= FACTORS["chat"] * solo
    if row["kind"] == "autocomplete":
        solo = alone.get("autocomplete")
        return solo is not None and row["ttft_s"] is not None and row["ttft_s"] <= FACTORS["autocomplete"] * solo
    return True


def score(rows: list[dict], alone: dict, wall_s: float) -> dict:
    """Per kind: requests, answered, met, TTFT p50/p95, tokens/s over the mix; overall goodput."""
    kinds = {}
    for kind in KINDS:
        mine = [r for r in rows if r["kind"] == kind]
        ttfts = [r["ttft_s"] for r in mine if r["ok"] and r["ttft_s"] is not None]
        tokens = sum(r["tokens"] for r in mine)
        kinds[kind] = {"requests": len(mine), "answered": sum(r["ok"] for r in mine),
                       "met": sum(meets(r, alone) for r in mine), "ttft_p50_s": percentile(ttfts, 50),
                       "ttft_p95_s": percentile(ttfts, 95), "tokens": tokens,
                       "tokens_per_s": tokens / wall_s if wall_s else 0.0,
                       "errors": dict(Counter(r["error"] for r in mine if r["error"]))}
    met = sum(k["met"] for k in kinds.values())
    return {"kinds": kinds, "requests": len(rows), "met": met, "wall_s": wall_s,
            "goodput_per_min": met / (wall_s / 60) if wall_s else 0.0}


def _thread(target, *args, delay: float = 0.0) -> threading.Thread:
    def run():
        time.sleep(delay)
        target(*args)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def alone(face: Face, mix: Mix, count_tokens) -> dict:
    """One conversation and one typist with nobody else on the server (people who are not in the mix)."""
    from impetus.bench.team_traffic import Rows, chat_user, editor

    rows = Rows(count_tokens)
    chat_user(face.chat_url, face.chat_model, face.headers.get("chat-alone", {}), mix.chat_users, ALONE_TURNS,
              THINK_S / 5, mix.chat_tokens, rows)
    editor(face.coder_url, face.coder_model, face.headers.get("editor-alone", {}), mix.editors + 1,
           min(mix.keystrokes, 20), PAUSE_S, mix.fim_tokens, rows, face.fim)
    chat = [r["ttft_s"] for r in sorted(rows.rows, key=lambda r: r["turn"]) if r["kind"] == "chat" and r["ok"]]
    typed = [r["ttft_s"] for r in rows.rows if r["kind"] == "autocomplete" and r["ok"]]
    return {"chat": chat, "autocomplete": percentile(typed, 50), "rows": rows.rows}


def run_mix(face: Face, mix: Mix, count_tokens, progress) -> dict:
    from impetus.bench.team_traffic import Rows, agent_sessions, batch_api, batch_loop, chat_user, editor

    rows, batch = Rows(count_tokens), {}
    until = rows.started + mix.duration_s
    keys = [face.headers[f"agent-{i}"] for i in range(mix.sessions)] if face.headers else None

    def the_batch():
        if face.batch_key:
            batch.update(batch_api(face.chat_url, face.chat_model, face.batch_key, mix.requests, mix.batch_tokens,
                                   rows))
        else:
            batch.update(batch_loop(face.chat_url, face.chat_model, mix.requests, mix.batch_tokens,
                                    mix.loop_concurrency, rows))

    threads = [_thread(agent_sessions, face.chat_url, face.chat_model, keys, mix.sessions, mix.agent_turns,
                       mix.gap_s, mix.agent_tokens, face.peer, rows), _thread(the_batch)]
    threads += [_thread(chat_user, face.chat_url, face.chat_model, face.headers.get(f"chat-{u}", {}), u, 10**6,
                        THINK_S, mix.chat_tokens, rows, until, delay=u * 1.0) for u in range(mix.chat_users)]
    threads += [_thread(editor, face.coder_url, face.coder_model, face.headers.get(f"editor-{e}", {}), e,
                        mix.keystrokes, PAUSE_S, mix.fim_tokens, rows, face.fim, delay=EDITORS_START_S + e * 7)
                for e in range(mix.editors)]
    for thread in threads:
        thread.join()
    wall = max((r["end_s"] for r in rows.rows), default=0.0)
    progress(f"  {face.name}: the mix took {wall:.0f} s ({len(rows.rows)} requests; batch {batch})")
    return {"rows": rows.rows, "wall_s": wall, "batch": batch}


def measure(face: Face, mix: Mix, count_tokens, progress) -> dict:
    solo = alone(face, mix, count_tokens)
    progress(f"  {face.name}: alone, chat TTFT by turn {[round(t, 3) for t in solo['chat']]} s, "
             f"autocomplete p50 {solo['autocomplete']}")
    together = run_mix(face, mix, count_tokens, progress)
    scored = score(together["rows"], solo, together["wall_s"])
    for kind, k in scored["kinds"].items():
        progress(f"    {kind:<12} met {k['met']}/{k['requests']} (answered {k['answered']}), TTFT p50 "
                 f"{k['ttft_p50_s']} p95 {k['ttft_p95_s']}, {k['tokens_per_s']:.1f} tok/s, errors {k['errors']}")
    progress(f"  {face.name}: goodput {scored['goodput_per_min']:.1f} requests/min that met their target")
    return {"server": face.name, "alone": solo, **together, **scored}


def run(settings, mix: Mix, work: Path, progress, servers: tuple[str, ...] = ("impetus", "mlx_lm.server")) -> dict:
    from impetus.bench.team_servers import impetus_face, models, peer_faces

    chat_folder, coder_folder, count_tokens = models(settings, work, progress)
    results = []
    for name in servers:
        serve = impetus_face if name == "impetus" else peer_faces
        with serve(chat_folder, coder_folder, mix, work) as face:
            results.append(measure(face, mix, count_tokens, progress))
    out = {"scenario": "team", "model": chat_folder.name, "coder": "random Qwen2 coder (bench.autocomplete.SIZE)",
           "mix": mix.__dict__, "results": results}
    by = {r["server"]: r for r in results}
    if "impetus" in by and "mlx_lm.server" in by and by["mlx_lm.server"]["goodput_per_min"]:
        out["goodput_ratio"] = by["impetus"]["goodput_per_min"] / by["mlx_lm.server"]["goodput_per_min"]
        progress(f"  goodput: impetus / mlx_lm.server = {out['goodput_ratio']:.2f}x (target >= 1.5x)")
    return out


def plot(result: dict, out: Path) -> list[Path]:
    fig, (left, right) = plots.figure(2)
    names = [r["server"] for r in result["results"]]
    bottom = [0.0] * len(names)
    for kind in KINDS:
        values = [r["kinds"][kind]["met"] / (r["wall_s"] / 60) if r["wall_s"] else 0 for r in result["results"]]
        left.bar(names, values, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.set(ylabel="requests that met their target, per minute", title="goodput of a team's mix")
    left.legend()
    width = 0.8 / max(1, len(names))
    streamed = ("agent", "chat", "autocomplete")
    for k, r in enumerate(result["results"]):
        right.bar([i + k * width for i in range(len(streamed))],
                  [r["kinds"][kind]["ttft_p50_s"] or 0 for kind in streamed], width, label=r["server"])
    right.set_xticks([i + width / 2 for i in range(len(streamed))], streamed)
    right.set(ylabel="TTFT p50 (s)", yscale="log", title="time to first token in the mix")
    right.legend()
    return plots.save(fig, out)

