"""OpenAI's static chunking, in the embedding model's own tokens.

A file's text is cut into windows of `max_chunk_size_tokens` (default 800,
100 to 4,096) that start `max - chunk_overlap_tokens` apart (default overlap
400, at most half the window), as OpenAI's `static` strategy. Tokens are the
embedding model's (all-MiniLM-L6-v2's WordPiece), so a chunk's text is cut
from the original at the tokens' character offsets: case, spacing and
punctuation survive (decoding WordPiece would lowercase them).

The embedding model reads at most its `max_tokens` (MiniLM: 256 with [CLS] and
[SEP]); a longer chunk's vector is the normalized mean of its pieces' vectors
(`pieces`), so no part of an 800-token chunk is cut off from the vector
search. BM25 reads the whole chunk's text.

What it must not do: embed (ingest.py does) or store.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP = 800, 400
MIN_MAX_TOKENS, MAX_MAX_TOKENS = 100, 4096


@dataclass(frozen=True)
class Chunk:
    seq: int
    text: str
    ids: list[int]  # its tokens, without special tokens


def check(max_tokens: int, overlap: int) -> str | None:
    """What is wrong with a static strategy, in OpenAI's words; None when it is fine."""
    if not MIN_MAX_TOKENS <= max_tokens <= MAX_MAX_TOKENS:
        return f"max_chunk_size_tokens must be between {MIN_MAX_TOKENS} and {MAX_MAX_TOKENS}."
    if overlap < 0 or overlap > max_tokens // 2:
        return "chunk_overlap_tokens must be non-negative and must not exceed half of max_chunk_size_tokens."
    return None


_untruncated: dict[int, object] = {}


def _tokenizer(model):
    """The model's tokenizer without its truncation (a copy: the model's own keeps it)."""
    key = id(model.tokenizer)
    if key not in _untruncated:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(model.tokenizer.to_str())
        copy.no_truncation()
        copy.no_padding()
        _untruncated[key] = copy
    return _untruncated[key]


def chunks(model, text: str, max_tokens: int = DEFAULT_MAX_TOKENS, overlap: int = DEFAULT_OVERLAP) -> list[Chunk]:
    encoding = _tokenizer(model).encode(text, add_special_tokens=False)
    ids, offsets = encoding.ids, encoding.offsets
    if not ids:
        return []
    out, start, stride = [], 0, max_tokens - overlap
    while True:
        end = min(start + max_tokens, len(ids))
        out.append(Chunk(len(out), text[offsets[start][0]:offsets[end - 1][1]], list(ids[start:end])))
        if end == len(ids):
            return out
        start += stride


def pieces(model, chunk: Chunk) -> list[list[int]]:
    """The chunk as token lists the model reads whole (with its special tokens)."""
    room = model.max_tokens - 2  # [CLS] and [SEP]
    return [model.wrap(chunk.ids[i:i + room]) for i in range(0, len(chunk.ids), room)]


def count(model, text: str) -> int:
    return len(_tokenizer(model).encode(text, add_special_tokens=False).ids)
