"""Rebuild a model's tokenizer from GGUF metadata with the `tokenizers` library
(transformers' own GGUF reader needs torch, which the server does not install).

Two kinds of GGUF vocabularies cover the models teams run:

- `gpt2`: byte-level BPE with merges (SmolLM, Llama 3, Qwen, Phi-4...): the
  vocabulary and merges as they are, plus the pre-tokenizer split that
  `tokenizer.ggml.pre` names.
- `llama`: SentencePiece (Llama 2, Mistral, Gemma: 262,144 pieces) stored as
  pieces, scores and token types, with no merges. SentencePiece's BPE joins, at
  each step, the adjacent pair whose union is the best-scored piece; that is a
  BPE whose merges are every split of every piece, ranked by the piece's score,
  which is what is built here. Characters outside the vocabulary fall back to
  `<0xNN>` byte pieces. The leading "▁" is added only at the start of the
  text, not after special tokens, as llama.cpp does.

Control tokens become special tokens; user-defined ones (Gemma's runs of
newlines and HTML tags) are matched whole before BPE, as llama.cpp matches them.
"""

from __future__ import annotations

from impetus.models.gguf.reader import GGUFImportError

# tokenizer.ggml.pre -> the split the original Hugging Face tokenizer applied
# before byte-level BPE (as llama.cpp's llama-vocab maps them).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {"llama3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT,
           "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT}

# GGUF token types (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SUPPORTED = ("gpt2", "llama")


def build_tokenizer(meta: dict):
    """A `tokenizers.Tokenizer` equivalent to the GGUF's vocabulary."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    if not tokens:
        raise GGUFImportError("the GGUF has no tokenizer.ggml.tokens: no tokenizer to rebuild")
    types = list(meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(meta, tokens)
    elif kind == "llama":
        tokenizer = _sentencepiece(meta, tokens, types)
    else:
        raise GGUFImportError(f"the GGUF's tokenizer is {kind!r}; supported: {', '.join(SUPPORTED)} "
                              "(byte-level BPE and SentencePiece)")
    _add_special_tokens(tokenizer, tokens, types)
    _set_post_processor(tokenizer, meta, tokens, kind)
    return tokenizer


def _byte_level_bpe(meta: dict, tokens: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges") or []]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = meta.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if pre in _SPLITS:
        split = pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        steps = []
        if pre == "smollm":
            steps.append(pre_tokenizers.Digits(individual_digits=True))
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def sentencepiece_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """Every split (left, right) of every normal piece into two normal pieces,
    best-scored union first (ties: lower id first)."""
    normal = {}
    for index, token in enumerate(tokens):
        if types[index] == NORMAL and token not in normal:
            normal[token] = index
    ranked = []
    for piece, index in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[index], index, normal[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _sentencepiece(meta: dict, tokens: list[str], types: list[int]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    scores = list(meta.get("tokenizer.ggml.scores") or [])
    if len(scores) != len(tokens):
        raise GGUFImportError("a SentencePiece GGUF tokenizer needs one score per token "
                              f"({len(scores)} scores for {len(tokens)} tokens)")
    vocab = {}
    for index, token in enumerate(tokens):
        vocab.setdefault(token, index)
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and unk_id < len(tokens) else None
    model = models.BPE(vocab=vocab, merges=sentencepiece_merges(tokens, scores, types), unk_token=unk,
                       fuse_unk=True, byte_fallback=BYTE in types)
    tokenizer = Tokenizer(model)
    space_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if space_prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    return tokenizer


def _add_special_tokens(tokenizer, tokens: list[str], types: list[int]) -> None:
    from tokenizers import AddedToken

    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i, kind in enumerate(types) if kind == CONTROL]
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i, kind in enumerate(types) if kind == USER_DEFINED]
    tokenizer.add_special_tokens(special)
    tokenizer.add_tokens(user)


def _set_post_processor(tokenizer, meta: dict, tokens: list[str], kind: str) -> None:
    from tokenizers import processors

    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    # SentencePiece vocabularies add BOS unless told not to (llama.cpp's default).
    add_bos = meta.get("tokenizer.ggml.add_bos_token", kind == "llama")
    if add_bos and bos_id is not None and bos_id < len(tokens):
        bos = tokens[bos_id]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    elif kind == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)


def build_tokenizer_config(meta: dict, context_length: int | None) -> dict:
    tokens = meta["tokenizer.ggml.tokens"]
    kind = meta.get("tokenizer.ggml.model")

    def token(key):
        index = meta.get(key)
        return tokens[index] if index is not None and index < len(tokens) else None

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama")),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return {k: v for k, v in config.items() if v is not None}
