"""POST /v1/embeddings through the official openai client and LangChain, on a
real server with the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.slow

REFERENCE = json.loads((Path(__file__).parents[1] / "embeddings" / "data" / "reference.json").read_text())
MODEL = "all-minilm-l6-v2"


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_openai_client_floats_match_the_reference(client):
    response = client.embeddings.create(model=MODEL, input=REFERENCE["sentences"])
    assert response.model == MODEL and len(response.data) == len(REFERENCE["sentences"])
    assert [d.index for d in response.data] == list(range(len(REFERENCE["sentences"])))
    for item, reference in zip(response.data, REFERENCE["vectors"]):
        assert len(item.embedding) == 384
        assert cosine(item.embedding, reference) > 0.999
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(REFERENCE["token_counts"])


def test_base64_is_the_same_vector(client, server):
    floats = client.embeddings.create(model=MODEL, input="Paris is the capital of France.").data[0].embedding
    raw = httpx.post(f"{server.base_url}/v1/embeddings", timeout=60, json={
        "model": MODEL, "input": "Paris is the capital of France.", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert np.abs(decoded - np.array(floats, dtype=np.float32)).max() == 0
    # The openai client asks for base64 by default when numpy is there, and decodes it itself.
    assert cosine(floats, REFERENCE["vectors"][4]) > 0.999


def test_token_arrays_and_dimensions(client, server):
    text_vector = client.embeddings.create(model=MODEL, input="How do I reset my password?").data[0].embedding
    from tokenizers import Tokenizer

    from impetus.embeddings.model import packaged_default_folder

    tokenizer = Tokenizer.from_file(str(packaged_default_folder() / "tokenizer.json"))
    tokenizer.no_padding()  # the file pads to 128 with [PAD]: a client would send only the real ids
    ids = tokenizer.encode("How do I reset my password?", add_special_tokens=False).ids
    by_ids = client.embeddings.create(model=MODEL, input=[ids, ids]).data
    assert len(by_ids) == 2 and np.abs(np.array(by_ids[1].embedding) - text_vector).max() < 1e-5
    assert len(client.embeddings.create(model=MODEL, input="x", dimensions=384).data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as error:
        client.embeddings.create(model=MODEL, input="x", dimensions=128)
    assert error.value.body["param"] == "dimensions"


@pytest.mark.parametrize("body, status, param", [
    ({"model": MODEL, "input": ""}, 400, "input"),
    ({"model": MODEL, "input": []}, 400, "input"),
    ({"model": MODEL, "input": [[]]}, 400, "input"),
    ({"model": MODEL, "input": [5, 10**9]}, 400, "input"),
    ({"model": MODEL, "input": ["a"] * 2049}, 400, "input"),
    ({"model": MODEL, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": MODEL, "input": "x", "dimensions": 0}, 400, "dimensions"),
    ({"model": MODEL}, 400, "input"),
    ({"model": "smollm2-135m-instruct", "input": "x"}, 400, "model"),
    ({"model": "no-such-embedder", "input": "x"}, 404, "model"),
])
def test_bad_requests_are_openai_errors(server, body, status, param):
    response = httpx.post(f"{server.base_url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["message"]


def test_models_list_names_the_embedding_model(client):
    models = {m.id: m for m in client.models.list().data}
    assert models[MODEL].model_extra["type"] == "embedding"
    assert models["smollm2-135m-instruct"].model_extra["type"] == "chat"


def test_langchain_embeddings_rank_the_right_passage(server):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain otherwise tokenizes with
    # OpenAI's tiktoken and sends those ids, which mean nothing to another model.
    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{server.base_url}/v1", api_key="unused",
                                  check_embedding_ctx_length=False)
    passages = ["The Eiffel Tower is in Paris.", "Photosynthesis turns light into chemical energy.",
                "The stock market closed lower on Friday."]
    vectors = embeddings.embed_documents(passages)
    query = embeddings.embed_query("How do plants make energy from sunlight?")
    scores = [cosine(query, v) for v in vectors]
    assert scores.index(max(scores)) == 1
