"""Constrained decoding: output that must match a JSON schema (OpenAI's
`response_format`, and tool calls that must be made), with llguidance.

llguidance compiles the schema into a grammar over the model's own tokens; at
every step it says which tokens keep the output valid, and a logits processor
masks all others. So even the 135M default model returns JSON that validates,
every time (unless max_tokens cuts it off: finish_reason "length", as OpenAI).
"""

from __future__ import annotations

import json
import weakref

import mlx.core as mx
import numpy as np

from impetus.engine.waiters import native_lock

# The grammar's JSON is compact (no free whitespace between tokens): fewer
# tokens to generate, and a small model cannot wander off into blank lines.
JSON_OPTIONS = {"whitespace_flexible": False}

# Keyed by the tokenizer object itself: an id() could be reused by another
# model's tokenizer after an unload.
_tokenizers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# Taken in native threads (the API compiles grammars off the hub): a native lock.
_tokenizers_lock = native_lock()


class GrammarError(ValueError):
    """The schema cannot be compiled; the message says why (a 400 for the client)."""


def ll_tokenizer(tokenizer):
    """llguidance's view of a model's tokenizer: built once per tokenizer (~1 s)."""
    import llguidance.hf

    with _tokenizers_lock:
        if tokenizer not in _tokenizers:
            hf = getattr(tokenizer, "_tokenizer", tokenizer)  # mlx-lm's wrapper holds the HF tokenizer
            eos = sorted(getattr(tokenizer, "eos_token_ids", None) or [hf.eos_token_id])
            _tokenizers[tokenizer] = llguidance.hf.from_tokenizer(hf, eos_token=eos)
        return _tokenizers[tokenizer]


def json_schema_grammar(schema: dict) -> str:
    from llguidance import LLMatcher

    try:
        return LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as error:
        raise GrammarError(f"invalid JSON schema: {error}") from None


def check_grammar(grammar: str, lltokenizer) -> None:
    from llguidance import LLMatcher

    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar, lltokenizer)
    if is_error:
        raise GrammarError(messages[0] if messages else "the schema cannot be used for decoding")


class GrammarProcessor:
    """An mlx-lm logits processor for one request: lets through only the tokens
    the grammar allows next.

    mlx-lm calls it once per generated token with the tokens so far; the first
    call comes right after the prompt (its last token is the prompt's), every
    later call's last token is the one just sampled, which the matcher takes in
    before computing the next mask.
    """

    def __init__(self, lltokenizer, grammar: str):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(lltokenizer, grammar)
        self.vocab = lltokenizer.vocab_size
        self.words = np.full((self.vocab + 31) // 32, -1, dtype=np.int32)
        self.started = False

    def resume(self) -> None:
        """The request was paused and its last token is fed again: the
        matcher has taken it in already, so the next call must not."""
        self.started = False

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.started:
            self.matcher.consume_token(int(tokens[-1].item()))
        self.started = True
        if self.matcher.is_error():  # cannot happen with masked sampling; never fail the batch for it
            return logits
        self.matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        allowed = np.unpackbits(self.words.view(np.uint8), bitorder="little")[: self.vocab].astype(bool)
        rows = logits.shape[-1]
        if rows > self.vocab:  # the model's padding rows are never valid tokens
            allowed = np.concatenate([allowed, np.zeros(rows - self.vocab, dtype=bool)])
        return mx.where(mx.array(allowed[:rows]), logits, -mx.inf)


def parse_json(text: str):
    """The generated JSON, or None when it is not (cut off by max_tokens)."""
    try:
        return json.loads(text)
    except ValueError:
        return None
