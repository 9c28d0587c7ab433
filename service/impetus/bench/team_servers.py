"""The team benchmark's two servers (bench.team), started on the same weights:
Impetus on its production path and mlx_lm.server one process per model.

`models` writes what both read: Gemma 3 270M as float32 with a chat template
(bench.agents.model_folder) and the random Qwen2 coder with FIM tokens
(bench.autocomplete), imported as float32 for Impetus and saved by mlx-lm
for mlx_lm.server. Each face is a context manager that stops what it started.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from impetus.bench.team import Face, Mix

PEOPLE = ("agent", "chat", "editor")


def models(settings, work: Path, progress):
    """(chat model folder, coder folder, a function counting the chat model's tokens in a text)."""
    from tokenizers import Tokenizer

    from impetus.bench import agents
    from impetus.bench.autocomplete import SIZE
    from impetus.bench.random_gguf import write_coder
    from impetus.models.gguf import Options, import_gguf

    chat = agents.model_folder(settings, work, progress)
    coder = work / "models" / "coder"
    if not (coder / "config.json").exists():
        progress(f"  writing a random coder GGUF {SIZE} (timings only)")
        import_gguf(write_coder(work / "coder.gguf", "qwen", size=SIZE, context=8192), work / "models", name="coder",
                    options=Options(dtype="float32"))
    tokenizer = Tokenizer.from_file(str(chat / "tokenizer.json"))
    return chat, coder, lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def _people(mix: Mix) -> list[str]:
    counts = {"agent": mix.sessions, "chat": mix.chat_users, "editor": mix.editors}
    return [f"{kind}-{i}" for kind in PEOPLE for i in range(counts[kind])] + ["chat-alone", "editor-alone"]


@contextmanager
def impetus_face(chat: Path, coder: Path, mix: Mix, work: Path):
    """Impetus through nginx with a key per person; both models in its data dir, loaded on demand."""
    from impetus.bench.stack import gateway_stack

    data = work / "data-impetus"
    (data / "models").mkdir(parents=True, exist_ok=True)
    for folder in (chat, coder):
        if not (data / "models" / folder.name).exists():
            os.symlink(folder.resolve(), data / "models" / folder.name)
    env = {"IMPETUS_DATA_DIR": str(data), "IMPETUS_MODEL": chat.name, "IMPETUS_MAX_QUEUE": "256"}
    with gateway_stack(work / "impetus", env) as stack:
        headers = {}
        for person in _people(mix):
            key, _ = stack.keys.create(person, rpm=1_000_000, tpm=1_000_000_000,
                                       autocomplete_priority="interactive" if person.startswith("editor") else None)
            headers[person] = {"Authorization": f"Bearer {key}"}
        batch_key, _ = stack.keys.create("overnight", rpm=1_000_000, tpm=1_000_000_000)
        face = Face("impetus", stack.url, stack.url, chat.name, coder.name, headers, batch_key)
        _warm(face)
        yield face


@contextmanager
def peer_faces(chat: Path, coder: Path, mix: Mix, work: Path):
    """mlx_lm.server, one process per model, on loopback; the client renders the coder's FIM prompt."""
    from impetus.bench.peer import float32_copy, start_peer
    from impetus.models.fim import FAMILIES
    from impetus.server.process import free_port, stop_server

    coder_copy = float32_copy(coder, work / "coder-mlx-lm")
    chat_port, coder_port = free_port(), free_port()
    processes = [start_peer(chat, chat_port, work / "mlx_lm-chat.log")]
    try:
        processes.append(start_peer(coder_copy, coder_port, work / "mlx_lm-coder.log"))
        face = Face("mlx_lm.server", f"http://127.0.0.1:{chat_port}", f"http://127.0.0.1:{coder_port}",
                    "default_model", "default_model", {}, None, fim=FAMILIES[0], peer=True)
        _warm(face)
        yield face
    finally:
        for process in processes:
            stop_server(process)


def _warm(face: Face) -> None:
    """One request to each model: loaded and compiled before anything is timed."""
    import httpx

    from impetus.bench.autocomplete import request_body

    with httpx.Client(timeout=600) as http:
        http.post(f"{face.chat_url}/v1/chat/completions", headers=face.headers.get("chat-alone", {}),
                  json={"model": face.chat_model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
        body = {**request_body(face.coder_model, "def f(x):\n    return ", "\n", 4, face.fim), "stream": False}
        body.pop("stream_options")
        http.post(f"{face.coder_url}/v1/completions", headers=face.headers.get("editor-alone", {}), json=body)
