"""Tiny random code models with fill-in-the-middle tokens, written by gguf-py:
a Qwen2.5-Coder-like one (prefix-suffix-middle, with pad, repository and file
separator tokens, named in the GGUF's tokenizer.ggml.fim_*_token_id keys as
llama.cpp's converter writes them) and a Codestral-like one (suffix-prefix,
found by its vocabulary alone)."""

from __future__ import annotations

from pathlib import Path

from tiny_gguf import byte_level_alphabet, write_tiny

QWEN = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
CODESTRAL = ["[PREFIX]", "[SUFFIX]"]
# The GGUF keys of QWEN's tokens, in its order.
QWEN_KEYS = ["fim_pre", "fim_mid", "fim_suf", "fim_pad", "fim_rep", "fim_sep"]


def write_coder(path: Path, family: str = "qwen") -> Path:
    markers = QWEN if family == "qwen" else CODESTRAL
    first = len(byte_level_alphabet()) + 7  # write_tiny's BPE vocabulary: the bytes, 5 merges, 2 chat tokens
    meta = {f"tokenizer.ggml.{key}_token_id": first + i for i, key in enumerate(QWEN_KEYS)} if family == "qwen" else {}
    return write_tiny(path, "qwen2", "F32", extra_tokens=[(m, 3) for m in markers], meta=meta)
