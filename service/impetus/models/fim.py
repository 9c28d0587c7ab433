"""The fill-in-the-middle markers of each code-model family (what
`api.fim` builds prompts with, what `models.metadata` reports as a
capability): their texts and order, read without a tokenizer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FimFormat:
    family: str
    prefix: str
    suffix: str
    middle: str | None  # Codestral's has none: the middle follows the prefix
    order: str  # "psm" or "spm"
    pad: str | None = None
    repo: str | None = None
    file_sep: str | None = None

    @property
    def markers(self) -> tuple[str, ...]:
        return tuple(m for m in (self.prefix, self.suffix, self.middle, self.pad, self.repo, self.file_sep) if m)


FAMILIES = (
    FimFormat("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "psm", "<|fim_pad|>", "<|repo_name|>",
              "<|file_sep|>"),
    FimFormat("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>", "psm", "<fim_pad>", "<repo_name>",
              "<file_sep>"),
    FimFormat("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>", "psm"),
    FimFormat("codestral", "[PREFIX]", "[SUFFIX]", None, "spm"),
)
