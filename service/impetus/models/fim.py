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


def choose(named: dict, has) -> FimFormat | None:
    """The FIM format of a model whose GGUF named `named` markers (kept at
    import: prefix, suffix, middle, pad, repo, sep), else of the first family
    whose markers `has(token)` all finds; the optional markers only where `has`
    finds them. None without FIM tokens. One choice for the prompt (api.fim)
    and for what the model is said to do (models.metadata)."""
    named = named if isinstance(named, dict) else {}
    if named.get("prefix") and named.get("suffix") and has(named["prefix"]) and has(named["suffix"]):
        family = next((f for f in FAMILIES if f.prefix == named["prefix"]), None)
        return FimFormat(family.family if family else "gguf", named["prefix"], named["suffix"], named.get("middle"),
                         family.order if family else "psm", named.get("pad"), named.get("repo"), named.get("sep"))
    for f in FAMILIES:
        if all(has(m) for m in (f.prefix, f.suffix, f.middle) if m):
            return FimFormat(f.family, f.prefix, f.suffix, f.middle, f.order,
                             *(m if m and has(m) else None for m in (f.pad, f.repo, f.file_sep)))
    return None
