"""The prefix cache's disk tier: KV caches of long prompt prefixes, kept in files.

A restart (a deploy, a crash, a reload) empties the RAM prefix cache, and
each coding agent's next turn prefilled its whole prompt again (Claude
Code's default prompt on Gemma 3 270M: 45 s here). The prefixes kept at a
prompt's points (`api.prompt.prefix_points`: after the tools, after the
system prompt, before the last token) are also written here, one
safetensors file each in mlx-lm's prompt-cache format, under
`<data dir>/prefix-cache/<fingerprint>/`. The fingerprint covers all that
makes a KV cache valid: the weights (the folder's revision), the dtype they
are served in, the KV cache's precision, and MLX's and mlx-lm's versions.

A file is named by its length and a digest of its tokens
(`<length>-<sha256>.safetensors`), so finding the longest stored prefix of
a prompt is a directory listing and one digest per stored length, with no
index to keep: every worker of a host reads and writes the same folder, and
worker 2 starts from worker 1's prefix. Files are written under a temporary
name and renamed, so nothing half-written is ever read; a file that does not
load (damaged, or another model's) is skipped with one log line and removed.
The byte budget is kept by removing the least recently used files
under a lock shared by the host's workers; a full disk turns the tier off
with one warning (RAM only), never an error to a client.

This room decides where and how prefixes are stored; it must not decide
which prefixes are worth keeping (the API's points, the batch's calls).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
from mlx_lm.models.cache import load_prompt_cache, save_prompt_cache

log = logging.getLogger("impetus.engine")

SUFFIX = ".safetensors"
STALE_TEMPORARY_S = 600  # a temporary file this old was left by a killed writer


def fingerprint(revision: str, weights_dtype: str, kv_bits: str | None = None) -> str:
    """What makes a stored KV cache valid for a loaded model."""
    key = f"{revision}|{weights_dtype}|kv{kv_bits or 'float'}|mlx {mx.__version__}|mlx-lm {mlx_lm.__version__}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def digest(tokens: list[int]) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype=np.int32).tobytes()).hexdigest()[:32]


class DiskTier:
    def __init__(self, root: Path, fingerprint: str, budget_bytes: int, stats):
        self.dir = root / fingerprint
        self.fingerprint = fingerprint
        self.budget = budget_bytes
        self.stats = stats
        self.enabled = True
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._off(f"cannot make {self.dir}: {error}")
            return

    # -- reading (the engine thread) ------------------------------------------

    def lengths(self) -> dict[int, set[str]]:
        """The stored prefixes: length -> digests."""
        found: dict[int, set[str]] = {}
        try:
            names = os.listdir(self.dir)
        except OSError:
            return found
        for name in names:
            length, _, rest = name.partition("-")
            if name.endswith(SUFFIX) and length.isdigit():
                found.setdefault(int(length), set()).add(rest[: -len(SUFFIX)])
        return found

    def fetch(self, prompt: list[int], longer_than: int) -> tuple[list, int] | None:
        """The KV cache of the longest stored prefix of `prompt` that is
        longer than `longer_than` tokens (and shorter than the prompt), and
        its length; None if there is none."""
        if not self.enabled:
            return None
        stored = self.lengths()
        for length in sorted((n for n in stored if longer_than < n < len(prompt)), reverse=True):
            key = digest(prompt[:length])
            if key not in stored[length]:
                continue
            path = self.dir / f"{length}-{key}{SUFFIX}"
            cache = self._load(path, length)
            if cache is not None:
                return cache, length
        return None

    def _load(self, path: Path, length: int) -> list | None:
        try:
            cache, meta = load_prompt_cache(str(path), return_metadata=True)
            if meta.get("impetus_fingerprint") != self.fingerprint or int(meta.get("length", -1)) != length:
                raise ValueError("written for another model or prefix")
            mx.eval([c.state for c in cache])
            if {c.offset for c in cache if hasattr(c, "offset")} - {length}:
                raise ValueError("its cache does not hold the prefix's length")
        except Exception as error:
            log.warning("prefix cache: skipping and removing %s (%s)", path.name, str(error)[:200])
            path.unlink(missing_ok=True)
            self.stats.disk_skipped += 1
            return None
        try:
            os.utime(path)  # recently used: the last to be removed
            self.stats.disk_bytes_read += path.stat().st_size
        except OSError:
            pass
        self.stats.disk_hits += 1
        return cache

    # -- writing ----------------------------------------------------------------

    def store(self, tokens: list[int], cache: list) -> None:
        """Write the KV cache of `tokens`, unless that prefix is stored
        already. On the engine thread: MLX arrays are not written from
        another thread here, and a write is short beside the prefill it
        saves (benchmarks/README.md, agents)."""
        if not self.enabled:
            return
        name = f"{len(tokens)}-{digest(tokens)}{SUFFIX}"
        if (self.dir / name).exists():
            return
        size = sum(c.nbytes for c in cache)
        temporary = self.dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{SUFFIX}"
        try:
            if not self._make_room(size):
                return
            save_prompt_cache(str(temporary), cache, {"impetus_fingerprint": self.fingerprint,
                                                      "length": str(len(tokens))})
            os.replace(temporary, self.dir / name)
            self.stats.disk_bytes_written += (self.dir / name).stat().st_size
            self.stats.disk_writes += 1
        except OSError as error:  # a full disk, a folder gone: RAM only from here on
            temporary.unlink(missing_ok=True)
            self._off(f"writing {name} failed: {error}")
        except Exception:
            temporary.unlink(missing_ok=True)
            log.exception("prefix cache: writing %s failed", name)

    def _make_room(self, size: int) -> bool:
        """Remove the least recently used files until `size` more fits the
        budget, under a lock the host's workers share; False: it never fits."""
        if size > self.budget:
            return False
        with open(self.dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            files = []
            now = time.time()
            for entry in os.scandir(self.dir):
                if not entry.name.endswith(SUFFIX):
                    continue
                stat = entry.stat()
                if entry.name.startswith(".tmp-"):
                    if now - stat.st_mtime > STALE_TEMPORARY_S:
                        os.unlink(entry.path)
                    continue
                files.append((stat.st_mtime, stat.st_size, entry.path))
            total = sum(f[1] for f in files)
            for _, bytes_, path in sorted(files):
                if total + size <= self.budget:
                    break
                os.unlink(path)
                total -= bytes_
                self.stats.disk_evicted += 1
            return True

    def _off(self, why: str) -> None:
        if self.enabled:
            log.warning("prefix cache: the disk tier is off, RAM only (%s)", why)
        self.enabled = False

    def usage(self) -> tuple[int, int]:
        """(files, bytes) stored for this model."""
        files = size = 0
        try:
            for entry in os.scandir(self.dir):
                if entry.name.endswith(SUFFIX) and not entry.name.startswith(".tmp-"):
                    files += 1
                    size += entry.stat().st_size
        except OSError:
            pass
        return files, size
