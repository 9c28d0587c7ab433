"""`impetus models pull REPO_ID`: download an MLX model folder from the Hugging
Face hub into the data directory.

The download goes to a hidden staging folder and is renamed into place only
once it is complete and holds a model, so an interrupted or failed pull leaves
nothing behind. Before downloading, one request with a short timeout checks
that the hub answers: offline, the pull fails in seconds with a clear message.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from impetus.models.store import is_model_folder

# What an MLX model folder needs; not the PyTorch or GGUF copies some repos also hold.
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py"]
PROBE_TIMEOUT_S = 8


class PullError(RuntimeError):
    pass


def default_name(repo_id: str) -> str:
    return repo_id.rstrip("/").rsplit("/", 1)[-1]


def pull(repo_id: str, models_dir: Path, name: str | None = None, revision: str | None = None,
         force: bool = False, progress=print) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if repo_id.count("/") != 1 or any(not part for part in repo_id.split("/")):
        raise PullError(f"{repo_id!r} is not a Hugging Face repository id (owner/name)")
    name = name or default_name(repo_id)
    target = models_dir / name
    if target.exists() and not force:
        raise PullError(f"{target} already exists (--force replaces it)")

    api = HfApi()
    endpoint = api.endpoint
    try:
        info = api.model_info(repo_id, revision=revision, timeout=PROBE_TIMEOUT_S)
    except OfflineModeIsEnabled:
        raise PullError("HF_HUB_OFFLINE is set: models cannot be downloaded. Copy an MLX model folder "
                        "to this machine and use its path, or import a GGUF (impetus models import-gguf).")
    except RepositoryNotFoundError:
        raise PullError(f"{repo_id} does not exist on {endpoint} (or is private: set HF_TOKEN)")
    except GatedRepoError:
        raise PullError(f"{repo_id} is gated: accept its terms on {endpoint} and set HF_TOKEN")
    except RevisionNotFoundError:
        raise PullError(f"{repo_id} has no revision {revision!r}")
    except HfHubHTTPError as error:
        raise PullError(f"{endpoint} refused the request for {repo_id}: {error}")
    except Exception as error:  # connection refused, DNS, timeout: the machine is offline
        raise PullError(f"cannot reach {endpoint} ({type(error).__name__}: {error}). This machine looks "
                        "offline: copy an MLX model folder here and use its path, or import a GGUF "
                        "(impetus models import-gguf).") from None
    files = [s.rfilename for s in (info.siblings or [])]
    if files and not any(f.endswith(".safetensors") for f in files):
        raise PullError(f"{repo_id} has no safetensors weights: not an MLX model folder "
                        "(mlx-community publishes MLX conversions)")

    models_dir.mkdir(parents=True, exist_ok=True)
    for stale in models_dir.glob(f".pull-{name}-*"):  # left by a pull that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = models_dir / f".pull-{name}-{os.getpid()}"
    progress(f"downloading {repo_id} ({info.sha[:12] if info.sha else 'latest'}) into {target}")
    try:
        snapshot_download(repo_id, revision=info.sha or revision, local_dir=staging, allow_patterns=MODEL_FILES)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping
        if not is_model_folder(staging):
            raise PullError(f"{repo_id} holds no config.json with safetensors weights: not an MLX model folder")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, PullError) or not isinstance(error, Exception):
            raise
        raise PullError(f"downloading {repo_id} failed: {type(error).__name__}: {error}") from error
    progress(f"pulled {repo_id} as {name!r}")
    return target
