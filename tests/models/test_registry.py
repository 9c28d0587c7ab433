"""The model registry: metadata read without loading, and aliases."""

from __future__ import annotations

import json

import pytest

from impetus.models.registry import AliasError, Registry
from impetus.models.store import DEFAULT_MODEL, ModelNotFound


@pytest.fixture
def registry(data_dir, tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    return Registry(tmp_path / "models")


def test_metadata_matches_the_loaded_model(registry, loaded_model):
    meta = registry.find(DEFAULT_MODEL).metadata
    # Counted from the packed 4-bit safetensors headers; the loaded model is float32.
    assert loaded_model.weights_dtype == "float32"
    assert meta.parameters == loaded_model.nbytes // 4
    assert meta.memory_estimate("float32") == loaded_model.nbytes
    assert meta.quantization == "4-bit (embeddings 8-bit)"
    assert meta.context_length == loaded_model.context_length == 8192
    assert meta.chat_template and meta.source == "gguf" and meta.architecture == "llama"
    weights = sum(p.stat().st_size for p in registry.find(DEFAULT_MODEL).path.glob("*.safetensors"))
    assert meta.memory_estimate("stored") == weights < meta.size_bytes


def test_aliases_name_a_model_with_its_own_weights(registry):
    entry = registry.add_alias("smol", DEFAULT_MODEL, "stored")
    assert (entry.name, entry.alias_of, entry.weights_dtype) == ("smol", DEFAULT_MODEL, "stored")
    assert entry.path == registry.find(DEFAULT_MODEL).path
    assert [e.name for e in registry.entries()] == ["smol", DEFAULT_MODEL]
    stored = json.loads((registry.models_dir / "aliases.json").read_text())
    assert stored == {"smol": {"target": DEFAULT_MODEL, "weights_dtype": "stored"}}
    registry.remove_alias("smol")
    assert [e.name for e in registry.entries()] == [DEFAULT_MODEL]


def test_an_alias_or_a_folder_may_set_its_kv_bits(registry, data_dir):
    entry = registry.add_alias("smol-kv8", DEFAULT_MODEL, kv_bits=8)
    assert (entry.kv_bits, entry.kv_group_size) == (8, None)
    assert registry.find(DEFAULT_MODEL).kv_bits is None
    for bits, group, message in ((3, None, "kv_bits must be one of 4, 8"), (8, 16, "kv_group_size must be"),
                                 (None, 64, "kv_group_size needs kv_bits")):
        with pytest.raises(AliasError, match=message):
            registry.add_alias("smol-bad", DEFAULT_MODEL, kv_bits=bits, kv_group_size=group)
    with pytest.raises(AliasError, match="not a model folder of this data dir"):
        registry.set_kv_bits(DEFAULT_MODEL, 8)  # a folder served in place (here a link) is not written to
    folder = registry.models_dir / "own"
    folder.mkdir()
    source = data_dir / "models" / DEFAULT_MODEL
    (folder / "config.json").write_text((source / "config.json").read_text())
    for weights in source.glob("*.safetensors"):
        (folder / weights.name).symlink_to(weights)
    assert (registry.set_kv_bits("own", 4, 32).kv_bits, registry.find("own").kv_group_size) == (4, 32)
    assert json.loads((folder / "config.json").read_text())["impetus"]["kv_bits"] == 4
    assert registry.add_alias("own-alias", "own").kv_bits == 4  # an alias without its own takes the folder's


@pytest.mark.parametrize("name, target, weights, message", [
    ("smol", "no-such-model", None, "not found"),
    (DEFAULT_MODEL, DEFAULT_MODEL, None, "already a model folder"),
    ("bad name!", DEFAULT_MODEL, None, "not a usable model name"),
    ("smol", DEFAULT_MODEL, "int3", "weights must be one of"),
])
def test_bad_aliases_are_refused(registry, name, target, weights, message):
    with pytest.raises((AliasError, ModelNotFound), match=message):
        registry.add_alias(name, target, weights)
    assert not (registry.models_dir / "aliases.json").exists()


def test_no_chains_and_a_dangling_alias_is_not_listed(registry, data_dir):
    (registry.models_dir / "other").symlink_to(data_dir / "models" / DEFAULT_MODEL)
    registry.add_alias("smol", "other")
    with pytest.raises(AliasError, match="itself an alias"):
        registry.add_alias("smoller", "smol")
    (registry.models_dir / "other").unlink()  # the target disappears
    assert [e.name for e in registry.entries()] == [DEFAULT_MODEL]
    with pytest.raises(ModelNotFound):
        registry.find("smol")
