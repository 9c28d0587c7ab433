from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from impetus.settings import Settings


def test_defaults(monkeypatch):
    for key in ("IMPETUS_CONFIG", "IMPETUS_PORT", "IMPETUS_DATA_DIR"):
        monkeypatch.delenv(key, raising=False)
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8081)
    assert settings.models_dir == settings.data_dir / "models"
    assert "Impetus" in str(settings.data_dir)


def test_environment_then_toml_file(monkeypatch, tmp_path):
    config = tmp_path / "impetus.toml"
    config.write_text('port = 9000\nmax_batch_size = 4\ndata_dir = "/srv/impetus"\n')
    monkeypatch.setenv("IMPETUS_CONFIG", str(config))
    monkeypatch.setenv("IMPETUS_PORT", "9100")
    settings = Settings()
    assert settings.port == 9100  # the environment wins over the file
    assert settings.max_batch_size == 4
    assert settings.data_dir == Path("/srv/impetus")
    assert Settings(port=1234).port == 1234  # explicit arguments win over both


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("IMPETUS_WEIGHTS_DTYPE", "float8")
    with pytest.raises(ValidationError):
        Settings()


def test_prefill_step_size_is_chosen_per_device_unless_set(monkeypatch):
    assert Settings().prefill_step_size is None  # the engine picks 512 on a GPU, 128 on a CPU
    monkeypatch.setenv("IMPETUS_PREFILL_STEP_SIZE", "256")
    assert Settings().prefill_step_size == 256
    monkeypatch.setenv("IMPETUS_PREFILL_STEP_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()
