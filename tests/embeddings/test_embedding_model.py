"""The MLX encoder against the reference implementation's vectors
(sentence-transformers on PyTorch, stored in data/reference.json by
make_reference.py), and the ways of giving it input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from impetus.embeddings.model import (
    DEFAULT_EMBEDDING_MODEL,
    EmbeddingModel,
    EmbeddingModelNotFound,
    available_embedding_models,
    resolve_embedding_model,
)

REFERENCE = json.loads((Path(__file__).with_name("data") / "reference.json").read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> EmbeddingModel:
    name, folder = resolve_embedding_model(DEFAULT_EMBEDDING_MODEL, tmp_path_factory.mktemp("models"))
    return EmbeddingModel.load(folder, name)


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_match_the_reference_implementation(model):
    tokens = model.tokenize(REFERENCE["sentences"])
    assert [len(t) for t in tokens] == REFERENCE["token_counts"]  # same tokens, same truncation
    vectors = model.embed(tokens)  # one batch of mixed lengths: padding must not leak in
    for sentence, ours, theirs in zip(REFERENCE["sentences"], vectors, REFERENCE["vectors"]):
        assert cosine(ours, theirs) > 0.999, sentence
        assert np.abs(ours - np.array(theirs)).max() < 1e-3
        assert np.linalg.norm(ours) == pytest.approx(1.0, abs=1e-5)  # the Normalize step


def test_a_sentence_alone_equals_the_same_sentence_in_a_batch(model):
    tokens = model.tokenize(REFERENCE["sentences"])
    batched = model.embed(tokens)
    for i in (0, 6, 7):
        alone = model.embed([tokens[i]])[0]
        assert np.abs(alone - batched[i]).max() < 1e-5


def test_token_ids_embed_like_their_text(model):
    text = REFERENCE["sentences"][2]
    ids = model.tokenizer.encode(text, add_special_tokens=False).ids
    assert model.wrap(ids) == model.tokenize([text])[0]
    long_ids = ids * 40
    assert len(model.wrap(long_ids)) == model.max_tokens == 256


def test_similar_sentences_are_closer_than_unrelated_ones(model):
    cat, feline, stocks = model.embed(model.tokenize(REFERENCE["sentences"][:3]))
    assert cosine(cat, feline) > cosine(cat, stocks) + 0.3


def test_names_and_folders(tmp_path, model):
    assert DEFAULT_EMBEDDING_MODEL in available_embedding_models(tmp_path)
    with pytest.raises(EmbeddingModelNotFound):
        resolve_embedding_model("no-such-model", tmp_path)
    # A copy of the folder under the models folder is found by its name, and by its path.
    import shutil

    shutil.copytree(model.path, tmp_path / "my-minilm")
    assert resolve_embedding_model("my-minilm", tmp_path) == ("my-minilm", tmp_path / "my-minilm")
    assert resolve_embedding_model(str(tmp_path / "my-minilm"), tmp_path)[0] == "my-minilm"
    assert "my-minilm" in available_embedding_models(tmp_path)
    # ... and is not taken for a chat model.
    from impetus.models.store import list_models

    assert "my-minilm" not in [m.name for m in list_models(tmp_path)]


def test_the_fast_erf_matches_mlx_erf():
    import mlx.core as mx

    from impetus.embeddings.bert import erf

    xs = mx.linspace(-8, 8, 200_001)
    assert mx.abs(erf(xs) - mx.erf(xs)).max().item() < 1e-6
