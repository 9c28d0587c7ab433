"""The one settings object, read from IMPETUS_* environment variables and an
optional TOML file, then passed down explicitly to whatever needs it."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import sys
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_MODEL = "smollm2-135m-instruct"
# The cluster's Redis password, under the data dir (impetus.stack.cluster).
CLUSTER_PASSWORD_FILE = Path("cluster") / "redis.password"


def read_password(data_dir: Path) -> str | None:
    try:
        return (data_dir / CLUSTER_PASSWORD_FILE).read_text().strip() or None
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return None


def default_data_dir() -> Path:
    # macOS: ~/Library/Application Support/Impetus, Linux: ~/.local/share/Impetus
    return Path(platformdirs.user_data_dir("Impetus", appauthor=False))


# A unix socket's path must fit sun_path with its NUL: 104 bytes on macOS, 108 on Linux.
SOCKET_PATH_LIMIT = 104 if sys.platform == "darwin" else 108


def redis_socket(data_dir: Path) -> Path:
    """The stack's Redis socket: in the data dir, unless that path is too long
    for a socket (pytest's temp dirs on a Mac, /private/var/folders/.../T/...,
    are), then /tmp/impetus-UID/HASH.sock (UID: the data dir's owner, so every
    user of one data dir finds it), tmux's layout, which macOS' /tmp cleaning
    leaves alone (it removes old regular files, not sockets)."""
    return stack_socket(data_dir, "redis/redis.sock", "")


def workers_socket(data_dir: Path) -> Path:
    """Where `impetus up`'s workers listen for its nginx: run/workers.sock, or
    /tmp/impetus-UID/HASH-workers.sock for a data dir too long (see redis_socket)."""
    return stack_socket(data_dir, "run/workers.sock", "-workers")


def stack_socket(data_dir: Path, inside: str, suffix: str) -> Path:
    path = data_dir / inside
    if len(os.fsencode(path)) < SOCKET_PATH_LIMIT:
        return path
    try:
        owner = data_dir.stat().st_uid
    except OSError:
        owner = os.getuid()
    digest = hashlib.sha256(os.fsencode(os.path.abspath(data_dir))).hexdigest()[:16]
    return Path("/tmp") / f"impetus-{owner}" / f"{digest}{suffix}.sock"


def private_redis_url(data_dir: Path) -> str:
    """The stack's own Redis under `data_dir`: its unix socket, with the
    cluster password once there is one. The path is %-quoted (redis-py
    unquotes it): a data dir may hold spaces, or a '%' or '?'."""
    from urllib.parse import quote

    password = read_password(data_dir)
    return f"unix://{quote(str(redis_socket(data_dir)))}" + (
        f"?password={quote(password, safe='')}" if password else "")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMPETUS_", extra="ignore")

    # Where models (and later keys, logs, redis) live.
    data_dir: Path = Field(default_factory=default_data_dir)

    # Serving
    host: str = "127.0.0.1"
    port: int = 8081
    # A unix socket to listen on instead of host:port: `impetus up` puts its
    # workers on run/workers.sock, which only its own nginx reaches, so two
    # stacks on one machine never share a port (impetus.stack.up).
    socket: Path | None = None
    # The id `impetus up` gives its run; /healthz and /readyz report it, and
    # `up` counts a component ready only when the id is its own.
    stack_id: str | None = None
    workers: int = 1
    # nginx's read timeout towards the workers and hosts: the longest an answer
    # collected whole may take, and how long a stream stranded on a host that
    # stopped answering (a pulled cable) waits before it is ended. The OpenAI and
    # Anthropic SDKs give up on a request after 600 s by default.
    upstream_read_timeout_s: int = 600
    # A stream can run for minutes; gunicorn's worker timeout must not kill it.
    worker_timeout: int = 600
    graceful_timeout: int = 60

    # The model served: a name under data_dir/models or a path to an MLX folder.
    model: str = DEFAULT_MODEL
    # "auto": float32 on a CPU device (MLX's quantized CPU kernels are slow and
    # do not gain from batching), the stored weights on a GPU.
    weights_dtype: Literal["auto", "stored", "float32", "float16", "bfloat16"] = "auto"

    # Engine
    # mlx_lm.server decodes 32 at once too; at 64 streams (2-core CPU) 32 gave 114 tok/s where 16 gave 89.
    max_batch_size: int = 32
    prefill_batch_size: int = 8
    # Prompt tokens each prefill step takes per request (a step also decodes one
    # token for everyone running). None: 512 on a GPU; 128 on a CPU, where a step
    # of 8 prompts padded to 512 took 10-20 s and stalled every running stream
    # (mixed prompts at 16 streams: TTFT p50 26 s at 512, 6.9 s at 128).
    prefill_step_size: int | None = Field(None, gt=0)
    # Requests allowed to wait for a batch slot; beyond that the API answers 503.
    max_queue: int = 64
    # Who gets a batch slot (impetus.engine.scheduler): "fair" between keys
    # (weighted by each key's share, by priority, pausing a key over its share
    # when another waits), or "fifo": arrival order, as mlx_lm.server.
    scheduler: Literal["fair", "fifo"] = "fair"
    # A request sharing a long prefix with one being prefilled waits for that
    # prefix and starts from it, instead of computing it again.
    share_prefix_in_flight: bool = True
    # Speculative decoding by prompt lookup (impetus.engine.speculative): while
    # at most `speculative_max_batch` requests run (none seeded), each is
    # decoded with up to `speculative_max_draft` tokens guessed from its own
    # prompt and output, all checked in one forward pass. Greedy output is the
    # same token for token, sampled output has the same distribution. Up to 3x
    # faster for a file given back, 1.3x at 4 streams (benchmarks/README.md).
    # "draft": guesses from `draft_model` (a model name or folder with the same
    # tokenizer, loaded beside each model served) instead; without one, ngram.
    speculative: Literal["off", "ngram", "draft"] = "ngram"
    draft_model: str | None = None
    speculative_max_draft: int = Field(8, ge=1, le=64)
    # None: 8 on a CPU (measured: past 8 sequences a step over 1 + K positions
    # each costs nearly (1 + K)x one position), 16 on a GPU (not measured here).
    speculative_max_batch: int | None = Field(None, ge=1, le=256)
    default_max_tokens: int = 2048
    # The temperature of requests that name none (Claude Code and Codex send none).
    default_temperature: float = Field(1.0, ge=0.0, le=2.0)
    # A max_tokens beyond the room the prompt leaves in the context: "clamp" it
    # to that room (agents ask for 32000 whatever the model), or "reject" it
    # with OpenAI's 400 (api.budget.output_budget).
    max_tokens_overflow: Literal["clamp", "reject"] = "clamp"
    prompt_cache_entries: int = 16
    prompt_cache_bytes: int = 512 * 1024 * 1024
    # A prompt's KV cache is kept at the points where other prompts part from
    # it (after the tools, after the system prompt, before its last token;
    # api.prompt), when the point is at least this many tokens in: a shorter
    # prefix is recomputed in a few prefill steps.
    prefix_checkpoint_min_tokens: int = Field(512, ge=1)
    # Those prefixes are also written to disk (data_dir/prefix-cache, shared
    # by the host's workers, kept across restarts; engine.prefix_disk), the
    # least recently used removed beyond this many bytes. 0 or false: RAM only.
    # Running requests' KV caches in 8 or 4 bits (their full-attention layers;
    # engine.kv_quant): about half (8) or a quarter (4) of a bfloat16 cache's
    # memory per token. None: as the model computes them. Speculative
    # decoding is off with it.
    kv_bits: Literal[4, 8] | None = None
    kv_group_size: Literal[32, 64, 128] = 64
    # Admission counts each request's KV cache at its prompt plus this many
    # output tokens (or its max_tokens if fewer; engine.kv_memory): agents
    # ask for 32,000 and answer in hundreds. An answer that runs past it
    # claims more as it grows.
    kv_output_reserve_tokens: int = Field(2048, ge=1)
    prefix_cache_disk: bool = True
    prefix_cache_disk_bytes: int = Field(8 * 1024**3, ge=0)
    # Only points this far into a prompt go to disk: a file holds every
    # token's KV (SmolLM2 in float32: 46 KB a token, 94 MB for 2,048), written
    # on the engine thread, while a shorter prefix is computed again in a few
    # seconds; an agent's 20k-token prompt is what a restart must not lose.
    prefix_cache_disk_min_tokens: int = Field(2048, ge=1)
    # Claude Code's first system block (x-anthropic-billing-header: ...) is
    # billing metadata that changes with the question; kept, no two sessions
    # share a prompt past its 47th character (api.messages_schemas).
    keep_billing_header: bool = False
    # Tools described by Impetus (a template without tools of its own) go
    # before the system prompt: they are the same for everybody, the
    # instructions after them are not (api.tools.conversation). False: after it.
    tools_before_system: bool = True

    # Freed MLX buffers kept for reuse, per worker. MLX's default keeps up to its
    # memory limit: a 135M model's worker grew to 6 GB resident in a soak while
    # 0.5-3 GB were in use. None: MLX's default.
    mlx_cache_limit_bytes: int | None = Field(2**30, ge=0)
    # After this many seconds with no request, a worker empties that cache and
    # returns the C heap's free pages to the OS (impetus.system.memory: ~80 ms
    # on the next first token). 0: never.
    idle_release_s: float = Field(30.0, ge=0)

    # `impetus up`: the first wait before a component that exited (or failed
    # to start) is started again; it doubles each time, up to 30 s.
    restart_backoff_s: float = Field(1.0, gt=0, le=30)

    # On a Mac, hold off idle sleep while serving (impetus.system.awake: caffeinate -i -w).
    keep_awake: bool = True

    # Models load on demand. Each worker keeps its models within its share
    # (budget / workers) of the memory budget: by default this fraction of the
    # machine's memory, or IMPETUS_MEMORY_BUDGET_BYTES. To make room, the least
    # recently used models that are neither pinned nor busy are unloaded.
    memory_budget_fraction: float = Field(0.5, gt=0, le=1)
    memory_budget_bytes: int | None = None
    # Never unloaded to make room or for idleness (by name or alias).
    pinned_models: list[str] = Field(default_factory=list)
    # Unload a model idle this long (seconds); None: only when memory is needed.
    keep_alive_s: float | None = None

    # HTTP. 32 MiB: Anthropic's own limit for a Messages request, whose
    # screenshots come base64-encoded (a 5 MB PNG is 6.7 MB of JSON).
    max_body_bytes: int = 32 * 1024 * 1024

    # Images (api/images.py). A request's images are decoded only within these:
    # each at most `image_max_bytes` and `image_max_pixels` (read from its header
    # before anything is decoded: a 100-byte PNG can claim 100,000 x 100,000),
    # at most `image_max_count` of them. Remote http(s) images are fetched only
    # from the hosts listed here (a server that fetches whatever a client names
    # is an SSRF hole), within the byte limit and `image_url_timeout_s`.
    image_max_bytes: int = Field(20 * 1024 * 1024, gt=0)
    image_max_pixels: int = Field(50_000_000, gt=0)
    image_max_count: int = Field(20, ge=1)
    image_url_hosts: list[str] = Field(default_factory=list)
    image_url_timeout_s: float = Field(10.0, gt=0, le=120)
    # Recordings (/v1/audio/transcriptions, speech/audio.py): OpenAI's 25 MB an
    # upload, and a length counted while decoding (opus compresses an hour of
    # silence into kilobytes).
    audio_max_bytes: int = Field(25 * 1024 * 1024, gt=0)
    audio_max_seconds: float = Field(3600.0, gt=0)
    # Documents (/v1/files, vector stores: impetus.documents), under data_dir/documents.
    # An upload is at most `file_max_bytes` (it comes in one request body, so within
    # max_body_bytes) and a key's files together at most `file_quota_bytes`.
    # Chunks are embedded by `documents_embedding_model` (none: the default one).
    file_max_bytes: int = Field(30 * 1024 * 1024, gt=0)
    # Batches (/v1/batches, api.batch_runner): a host (one worker of it at a time) sends at most
    # this many of a batch's lines at once, at batch priority (interactive work goes first).
    batch_concurrency: int = Field(16, ge=1, le=256)
    file_quota_bytes: int = Field(1024 * 1024 * 1024, gt=0)
    documents_embedding_model: str | None = None

    # Gateway: personal API keys and per-key limits, kept in Redis.
    require_api_keys: bool = False
    # Unset: the stack's private instance, a unix socket under data_dir.
    redis_url: str | None = None
    # The private Redis' append-only file: fsync once a second (a crash loses at
    # most a second of usage counts) or after every write ("always", slower).
    redis_appendfsync: Literal["everysec", "always"] = "everysec"
    default_rpm: int = 120
    default_tpm: int = 200_000
    # This host's address as other hosts and the gateway reach it (several Macs
    # on one Redis): in the host registry and in each answer's x-impetus-host.
    # Default: http://<hostname>:<port>.
    advertise: str | None = None
    # Several Macs: workers answer only requests that come through the gateway's
    # nginx (its secret header, impetus.gateway.guard) or from these addresses.
    # On for `impetus serve --join` and the workers of `impetus up --cluster`.
    gateway_guard: bool = False
    gateway_allow: list[str] = Field(default_factory=list)
    # Usage per key, model and day is kept this long (`impetus usage`).
    usage_retention_days: int = Field(400, ge=1)
    # Deterministic responses (temperature 0 or a seed) are kept this long.
    cache_ttl_s: int = 3600
    # Responses API answers made with `store` (the default) are kept this long
    # for previous_response_id and GET /v1/responses/{id}: 30 days, as OpenAI.
    response_store_ttl_s: int = Field(30 * 86400, ge=1)
    # Addresses (besides loopback) nginx lets reach /metrics and /v1/admin/, and
    # that may scrape /metrics without a key, e.g. the Prometheus host:
    # IMPETUS_ADMIN_ALLOW='["10.0.0.5", "10.0.1.0/24"]'.
    admin_allow: list[str] = Field(default_factory=list)

    # Logs: JSON lines to stderr, or to this file (rotated by newsyslog/logrotate).
    log_file: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Debugging only: put prompts in the request log lines. Keys are never logged.
    log_prompts: bool = False
    # Tests only: POST /v1/admin/debug/fault {"model": ...} makes that model's
    # engine thread raise, as a bug would (the worker must then be replaced).
    debug_faults: bool = False

    # Linux: preload Debian's OpenBLAS into MLX's CPU backend (~15x faster prefill).
    use_openblas: bool = True

    @field_validator("admin_allow", "gateway_allow")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            ipaddress.ip_network(address, strict=False)  # ValueError names the bad one
        return value

    def worker_memory_budget(self) -> int:
        if self.memory_budget_bytes is not None:
            total = self.memory_budget_bytes
        else:
            from impetus.system.info import total_memory_bytes

            total = int((total_memory_bytes() or 8 * 2**30) * self.memory_budget_fraction)
        return total // max(1, self.workers)

    @property
    def advertise_address(self) -> str:
        import socket

        return self.advertise or f"http://{socket.gethostname()}:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def effective_redis_url(self) -> str:
        """IMPETUS_REDIS_URL, or the stack's private Redis: its unix socket, with
        the cluster password once `impetus up --cluster` has made one (the CLI
        on the gateway Mac reaches it the same way)."""
        return self.redis_url or private_redis_url(self.data_dir)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = os.environ.get("IMPETUS_CONFIG")
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)
