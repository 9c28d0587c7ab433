"""Fill-in-the-middle (api.fim) on /v1/completions (`suffix`) and llama.cpp's
/infill: the exact tokens the engine is given for each family's order, with
other files as repository context, the stops, and a 400 naming a model that
has no FIM tokens. Tiny random code models written by gguf-py
(tests/tiny_fim.py), served by a real server."""

from __future__ import annotations

import json

import httpx
import pytest

from impetus.api import fim
from impetus.models.gguf import import_gguf

from conftest import Server

pytestmark = [pytest.mark.slow, pytest.mark.own_server("tiny code models with FIM tokens")]

PREFIX, SUFFIX = "def add(a, b):\n    ", "\n    return total\n"
EXTRA = ({"filename": "util.py", "text": "def helper():\n    pass\n"},)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tiny_fim import write_coder

    from tiny_gguf import write_tiny

    home = tmp_path_factory.mktemp("fim-home")
    import_gguf(write_coder(home / "coder.gguf", "qwen"), home / "models", name="coder")
    import_gguf(write_coder(home / "spm.gguf", "codestral"), home / "models", name="spm-coder")
    import_gguf(write_tiny(home / "plain.gguf", "qwen2", "F32"), home / "models", name="plain")
    server = Server(home, home / "server.log", model="coder")
    yield server
    server.stop()
    assert "Traceback" not in server.logs()


def tokenizer_of(served, name):
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(served.environment["IMPETUS_DATA_DIR"] + f"/models/{name}")


def expected_tokens(tokenizer, *markers_and_texts) -> list[int]:
    out = []
    for piece in markers_and_texts:
        out += [tokenizer.convert_tokens_to_ids(piece[1:])] if piece.startswith("@") else \
            tokenizer.encode(piece, add_special_tokens=False)
    return out


def test_each_familys_order_and_repository_context(served):
    coder = tokenizer_of(served, "coder")
    fmt = fim.fim_format(coder, {"impetus": {"fim": {"prefix": "<|fim_prefix|>", "suffix": "<|fim_suffix|>",
                                                     "middle": "<|fim_middle|>", "pad": "<|fim_pad|>",
                                                     "repo": "<|repo_name|>", "sep": "<|file_sep|>"}}})
    assert (fmt.family, fmt.order, fmt.pad) == ("qwen", "psm", "<|fim_pad|>")
    got = fim.fim_tokens(coder, fmt, fim.Infill(PREFIX, SUFFIX, "x = ", EXTRA), room=1000)
    # llama.cpp's format_infill: the repository, each file after a separator, then <PRE> prefix+prompt <SUF> <MID>.
    assert got == expected_tokens(coder, "@<|repo_name|>", "myproject\n", "@<|file_sep|>", "util.py\n",
                                  EXTRA[0]["text"], "@<|file_sep|>", "filename\n", "@<|fim_prefix|>", PREFIX, "x = ",
                                  "@<|fim_suffix|>", SUFFIX, "@<|fim_middle|>")
    # Too long for the room: the prefix loses its start, the suffix its end.
    cut = fim.fim_tokens(coder, fmt, fim.Infill("a" * 400 + PREFIX, SUFFIX * 40), room=60)
    assert len(cut) <= 60 and cut[-1] == coder.convert_tokens_to_ids("<|fim_middle|>")
    assert coder.decode(cut).startswith("<|fim_prefix|>") and PREFIX in coder.decode(cut)

    spm = tokenizer_of(served, "spm-coder")
    fmt = fim.fim_format(spm, {})  # no GGUF names: found by the vocabulary
    assert (fmt.family, fmt.order, fmt.middle) == ("codestral", "spm", None)
    assert fim.fim_tokens(spm, fmt, fim.Infill(PREFIX, SUFFIX), room=1000) == expected_tokens(
        spm, "@[SUFFIX]", SUFFIX, "@[PREFIX]", PREFIX)
    assert fim.fim_format(tokenizer_of(served, "plain"), {}) is None


def test_completions_and_infill_give_the_engine_exactly_those_tokens(served):
    coder = tokenizer_of(served, "coder")
    fmt = fim.fim_format(coder, {})
    tokens = fim.fim_tokens(coder, fmt, fim.Infill(PREFIX, SUFFIX, "x = ", EXTRA), room=1000)
    url = served.base_url
    # The same tokens sent as a token prompt: the same greedy answer, the same count.
    raw = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": "coder", "prompt": tokens, "max_tokens": 8, "temperature": 0}).json()
    infill = httpx.post(f"{url}/infill", timeout=60, json={
        "input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "x = ", "input_extra": list(EXTRA),
        "n_predict": 8, "temperature": 0}).json()
    assert infill["content"] == raw["choices"][0]["text"] and infill["tokens_evaluated"] == len(tokens)
    assert infill["stop"] is True and infill["model"] == "coder" and infill["timings"]["predicted_n"] >= 1

    plain = fim.fim_tokens(coder, fmt, fim.Infill(PREFIX, SUFFIX), room=1000)
    with_suffix = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": "coder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8, "temperature": 0}).json()
    same = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": "coder", "prompt": plain, "max_tokens": 8, "temperature": 0}).json()
    assert with_suffix["usage"]["prompt_tokens"] == len(plain)
    assert with_suffix["choices"][0]["text"] == same["choices"][0]["text"]
    # Ollama's generate with suffix (Continue's autocomplete): the same prompt, the same answer.
    ollama = httpx.post(f"{url}/api/generate", timeout=60, json={
        "model": "coder:latest", "prompt": PREFIX, "suffix": SUFFIX, "raw": True, "stream": False,
        "options": {"num_predict": 8, "temperature": 0}}).json()
    assert ollama["response"] == same["choices"][0]["text"] and ollama["prompt_eval_count"] == len(plain)
    # Continue takes a model for FIM when /api/show's template has ".Suffix", as Ollama's FIM templates do.
    shown = httpx.post(f"{url}/api/show", timeout=60, json={"name": "coder:latest"}).json()
    assert "insert" in shown["capabilities"] and shown["template"].startswith(
        "{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>{{- end }}")

    # Streamed as llama.cpp streams: content pieces, then the last line with stop and the counts.
    lines = []
    with httpx.stream("POST", f"{url}/infill", timeout=60, json={
            "input_prefix": PREFIX, "input_suffix": SUFFIX, "prompt": "x = ", "input_extra": list(EXTRA),
            "n_predict": 8, "temperature": 0, "stream": True}) as stream:
        lines = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert "".join(line["content"] for line in lines) == infill["content"] and lines[-1]["stop"] is True


def test_the_pad_ends_the_middle_and_a_model_without_fim_tokens_is_named(served):
    coder = tokenizer_of(served, "coder")
    pad = coder.convert_tokens_to_ids("<|fim_pad|>")
    stopped = httpx.post(f"{served.base_url}/v1/completions", timeout=60, json={
        "model": "coder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 8, "temperature": 0,
        "logit_bias": {str(pad): 100}}).json()["choices"][0]
    assert (stopped["text"], stopped["finish_reason"]) == ("", "stop")
    for path, body, param in (("/v1/completions", {"prompt": PREFIX, "suffix": SUFFIX}, "suffix"),
                              ("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX}, "input_suffix")):
        refused = httpx.post(f"{served.base_url}{path}", timeout=60, json={"model": "plain", **body})
        error = refused.json()["error"]
        assert refused.status_code == 400 and error["param"] == param, error
        assert error["code"] == "fill_in_middle_not_supported" and "'plain'" in error["message"]


def test_llama_vims_request_as_it_sends_it(served):
    """llama.vim's fim request (autoload/llama.vim), its warm-up, and a field no version sends."""
    request = {"id_slot": 0, "input_prefix": PREFIX, "input_suffix": SUFFIX, "input_extra": list(EXTRA),
               "prompt": "x = ", "n_predict": 16, "stop": [], "n_indent": 4, "top_k": 40, "top_p": 0.90,
               "stream": False, "samplers": ["top_k", "top_p", "infill"], "cache_prompt": True,
               "t_max_prompt_ms": 500, "t_max_predict_ms": 1000,
               "response_fields": ["content", "timings/prompt_n", "timings/predicted_n", "tokens_cached"]}
    answer = httpx.post(f"{served.base_url}/infill", timeout=60, json=request).json()
    assert set(answer) >= {"content", "timings/prompt_n", "timings/predicted_n"}, answer
    again = httpx.post(f"{served.base_url}/infill", timeout=60, json=request).json()
    assert again["tokens_cached"] > 0  # the same prompt again: from the prefix cache
    warm = httpx.post(f"{served.base_url}/infill", timeout=60, json={**request, "n_predict": 0,
                                                                      "response_fields": None}).json()
    assert warm["content"] == "" and warm["tokens_predicted"] == 0
    wrong = httpx.post(f"{served.base_url}/infill", timeout=60, json={**request, "input_middle": "x"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "input_middle"


def test_each_keystroke_reads_the_last_ones_prompt_from_the_prefix_cache(served):
    """A typist's requests over a growing prefix (llama.vim's, one per pause): each finds
    its prompt up to the cursor computed by the last one (the engine's count of prompt tokens
    read from the prefix cache); only the typed word, the suffix and the markers are new."""
    body = {"input_suffix": SUFFIX, "input_extra": list(EXTRA), "n_predict": 2, "temperature": 0}
    text, cached, evaluated = "def add(a, b):\n    total = 0\n    for", [], []
    for typed in (" x", " in", " range", "(10):"):
        text += typed
        answer = httpx.post(f"{served.base_url}/infill", timeout=60, json={**body, "input_prefix": text}).json()
        cached.append(answer["tokens_cached"])
        evaluated.append(answer["tokens_evaluated"])
    suffix_part = len(tokenizer_of(served, "coder").encode(SUFFIX, add_special_tokens=False)) + 2
    assert cached[1:] == sorted(cached[1:]), cached
    assert all(0 < e - c <= suffix_part + 8 for c, e in zip(cached[1:], evaluated[1:])), (cached, evaluated)

