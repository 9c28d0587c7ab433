from __future__ import annotations

import pytest

from impetus.models.store import DEFAULT_MODEL, ModelNotFound, list_models, resolve_model


def test_resolves_a_name_and_a_path(data_dir):
    models = data_dir / "models"
    by_name = resolve_model(DEFAULT_MODEL, models)
    assert by_name == models / DEFAULT_MODEL
    assert resolve_model(str(by_name), models) == by_name.resolve()
    assert [m.name for m in list_models(models)] == [DEFAULT_MODEL]


def test_a_hub_id_fails_fast_with_a_clear_message(data_dir):
    with pytest.raises(ModelNotFound, match="Hugging Face repository id; models are not downloaded"):
        resolve_model("mlx-community/Llama-3.2-1B-Instruct-4bit", data_dir / "models")


def test_a_folder_without_weights_is_not_a_model(tmp_path, data_dir):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound, match="not an MLX model folder"):
        resolve_model(str(tmp_path), data_dir / "models")
