"""Fill-in-the-middle: the tokens a code model reads to write what goes
between the text before an editor's cursor and the text after it.

Code models learn it with marker tokens around the two sides: Qwen2.5-Coder
and CodeGemma `<|fim_prefix|>`, `<|fim_suffix|>`, `<|fim_middle|>`;
StarCoder2 the same without bars; DeepSeek-Coder `<｜fim▁begin｜>`,
`<｜fim▁hole｜>`, `<｜fim▁end｜>`; Codestral `[SUFFIX]` and `[PREFIX]`, in
the other order. A GGUF names its markers (`tokenizer.ggml.fim_pre_token_id`
and the rest), which the importer keeps in config.json; otherwise the
vocabulary is searched for a family's.

The prompt is llama.cpp's (its server's `format_infill`), so a model answers
here as it does there: the other files' chunks (llama.cpp's `input_extra`)
as the repository context the family was trained on (`<|repo_name|>`, then
`<|file_sep|>NAME` before each file), then for prefix-suffix-middle order
`<PRE>prefix+prompt<SUF>suffix<MID>`, for suffix-prefix-middle
`<SUF>suffix<PRE>prefix+prompt<MID>`. What does not fit the context beside
the answer is cut where it matters least: the prefix loses its start, the
suffix its end (3:1 of the room, as llama.cpp), the extra chunks the oldest.
"""

from __future__ import annotations

from dataclasses import dataclass

from impetus.api.prompt import added_tokens
from impetus.models.fim import FimFormat, choose
from impetus.web import bad_request

# llama.cpp's chunk separator when the family has no file separator.
CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"


def fim_format(tokenizer, config: dict) -> FimFormat | None:
    """The model's FIM format (models.fim.choose): the GGUF's named markers,
    kept at import, else a family's; those in the tokenizer's added tokens."""
    impetus = config.get("impetus") if isinstance(config.get("impetus"), dict) else {}
    return choose(impetus.get("fim") or {}, added_tokens(tokenizer).__contains__)


def require(tokenizer, config: dict, model: str, param: str = "suffix") -> FimFormat:
    """The model's FIM format, or a 400 naming the model."""
    found = fim_format(tokenizer, config)
    if found is None:
        raise bad_request(f"The model '{model}' has no fill-in-the-middle tokens (it is not a code model trained "
                          f"for infill): send the prompt without {param}, or use a model that has them "
                          "(GET /v1/models shows capabilities.fill_in_middle).", param=param,
                          code="fill_in_middle_not_supported")
    return found


def room(engine, answer: int) -> int:
    """The tokens a FIM prompt may have: the context less the answer's `answer` tokens and one spare."""
    return engine.loaded.context_length - 2 - answer


@dataclass
class Infill:
    """One infill request's text: before the cursor (`prefix`, then `prompt`,
    the current line's start), after it (`suffix`), and other files' chunks
    (`extra`: dicts of `text` and `filename`)."""

    prefix: str
    suffix: str
    prompt: str = ""
    extra: tuple = ()


def fim_tokens(tokenizer, fmt: FimFormat, infill: Infill, room: int) -> list[int]:
    """The prompt's tokens, within `room` tokens (the context less the answer's)."""
    return fim_prompt(tokenizer, fmt, infill, room)[0]


def fim_prompt(tokenizer, fmt: FimFormat, infill: Infill, room: int) -> tuple[list[int], list[int]]:
    """The prompt's tokens, and where the next keystroke's prompt will part
    from it: after the text before the cursor (prefix-suffix order; typing
    appends to it), or after the suffix (suffix-prefix order). The engine
    keeps the cache there as its prefill passes (`keep_prefixes`), so a
    request the editor drops mid-prefill still leaves its work to the next:
    a typist on a 2-core CPU had 37 of 40 requests superseded before their
    first token without it."""
    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False)) if text else []

    def token(marker: str) -> list[int]:
        return [tokenizer.convert_tokens_to_ids(marker)]

    extra: list[int] = []
    if fmt.repo:
        extra += token(fmt.repo) + encode("myproject\n")
    for chunk in infill.extra:
        name = chunk.get("filename") or "tmp"
        extra += token(fmt.file_sep) + encode(name + "\n") if fmt.file_sep else encode(CHUNK_SEPARATOR)
        extra += encode(chunk.get("text") or "")
    if fmt.file_sep and infill.extra:
        extra += token(fmt.file_sep) + encode("filename\n")

    bos = [tokenizer.bos_token_id] if _adds_bos(tokenizer) else []
    prompt = encode(infill.prompt)
    fixed = 3 + len(bos) + len(prompt)  # the markers, BOS and the current line
    space = max(0, room - fixed)
    prefix, suffix = encode(infill.prefix), encode(infill.suffix)
    suffix = suffix[:max(space // 4, space - len(prefix))]
    prefix = prefix[len(prefix) - min(len(prefix), space - len(suffix)):]
    extra = extra[len(extra) - min(len(extra), max(0, space - len(prefix) - len(suffix))):]

    before = token(fmt.prefix) + prefix + prompt
    after = token(fmt.suffix) + suffix
    first, second = (before, after) if fmt.order == "psm" else (after, before)
    point = len(extra) + len(bos) + len(first)
    return extra + bos + first + second + (token(fmt.middle) if fmt.middle else []), [point] if point >= 16 else []


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    try:
        return tokenizer.encode("a")[:1] == [bos]
    except Exception:
        return False


def stop_markers(fmt: FimFormat) -> list[str]:
    """Texts that end the middle as editors expect it: the family's pad and
    file separator (a model that goes on to another file), and its markers."""
    return [m for m in (fmt.pad, fmt.file_sep, fmt.prefix, fmt.suffix, fmt.middle) if m]
