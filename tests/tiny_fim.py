"""Tiny random code models with fill-in-the-middle tokens (impetus.bench.random_gguf.write_coder):
a Qwen2.5-Coder-like one (prefix-suffix-middle, with pad, repository and file separator
tokens, named in the GGUF's tokenizer.ggml.fim_*_token_id keys as llama.cpp's converter writes
them) and a Codestral-like one (suffix-prefix, found by its vocabulary alone)."""

from impetus.bench.random_gguf import CODESTRAL_FIM, QWEN_FIM, write_coder  # noqa: F401
