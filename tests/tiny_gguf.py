"""The tests' small random-weight GGUF files: written by impetus.bench.random_gguf
(the benchmarks write theirs with it too)."""

from impetus.bench.random_gguf import (  # noqa: F401
    ARCHES,
    CHAT_TEMPLATE,
    EXPERT_FFN,
    EXPERTS,
    EXPERTS_USED,
    MOE,
    SPM_PIECES,
    THINKING_TEMPLATE,
    byte_level_alphabet,
    byte_to_char,
    write_tiny,
    write_tiny_llama,
)
