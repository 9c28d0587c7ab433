"""`impetus serve`, and `impetus serve --join` (one more Mac for a cluster).

A joining host checks the gateway's Redis first, so a wrong password or an
unreachable gateway is one line and exit code 1, not a traceback from every
worker. It then runs its Gunicorn workers supervised as `impetus up` runs
them (restarted with backoff after a crash: `kill -9` of the master brings a
new one in ~4 s, which registers again by its heartbeat), listening on the
LAN, requiring API keys and the gateway's secret (impetus.gateway.guard).
As `up` does (impetus.stack.lifeline, impetus.stack.identity), it counts
only its own workers' answer as ready, they die with it, and a new
`serve --join` on the port ends what a killed one left running.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from rich.console import Console

from impetus.models.store import is_model_folder


def _model_ready(settings) -> bool:
    from pathlib import Path

    return is_model_folder(Path(settings.model).expanduser()) or is_model_folder(
        settings.models_dir / settings.model
    )


def run(settings) -> None:
    console = Console(stderr=True, soft_wrap=True)
    if not _model_ready(settings):
        # Import in a child process: the Gunicorn master must not initialise
        # MLX before it forks the workers.
        console.print(f"[bold]preparing model[/] {settings.model}")
        command = [sys.executable, "-m", "impetus", "models", "ensure", settings.model,
                   "--data-dir", str(settings.data_dir)]
        if subprocess.run(command).returncode != 0:
            sys.exit(1)
    # Every worker writes its metrics here; /metrics sums them (multiprocess
    # mode). Set before Gunicorn (and prometheus-client) start; emptied so
    # counters of a previous run are not added in.
    metrics_dir = settings.data_dir / "run" / f"metrics-{settings.port}"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from impetus.server.gunicorn_app import serve
    from impetus.system.awake import keep_awake
    from impetus.system.blas import blas_in_use

    if settings.keep_awake and keep_awake() is not None:
        console.print("keeping this Mac awake while it serves (caffeinate -i; IMPETUS_KEEP_AWAKE=false to let it sleep)")

    console.print(
        f"[bold green]impetus[/] serving [bold]{settings.model}[/] on http://{settings.host}:{settings.port} "
        f"with {settings.workers} worker(s); BLAS: {blas_in_use()}"
    )
    serve(settings)


def join_environment(settings, redis_url: str) -> dict[str, str]:
    """What a joined host's workers run with: the gateway's Redis for keys,
    limits, cache, the Responses store and usage; keys required; only the
    gateway's nginx let in."""
    return {"IMPETUS_DATA_DIR": str(settings.data_dir), "IMPETUS_HOST": settings.host,
            "IMPETUS_WORKERS": str(settings.workers), "IMPETUS_MODEL": settings.model,
            "IMPETUS_REDIS_URL": redis_url, "IMPETUS_REQUIRE_API_KEYS": "true",
            "IMPETUS_GATEWAY_GUARD": "true", "IMPETUS_ADVERTISE": settings.advertise_address}


def read_join_file(path: str) -> str:
    try:
        return open(path).read().strip()
    except OSError as error:
        raise SystemExit(f"error: cannot read the join URL: {error}") from None


def check_join(redis_url: str) -> str | None:
    """Why the gateway's Redis cannot be used (one line), or None."""
    import redis

    from impetus.gateway import connect
    from impetus.stack.cluster import redacted

    where = redacted(redis_url)
    try:
        connect(redis_url, read_timeout=3).ping()
    except redis.AuthenticationError:
        if "password" not in redis.Redis.from_url(redis_url).connection_pool.connection_kwargs:
            return f"cannot join {where}: the gateway's Redis wants its password (redis://:PASSWORD@...)"
        return f"cannot join {where}: the password is wrong (see the gateway's `impetus up --cluster` output)"
    except redis.ResponseError as error:
        return f"cannot join {where}: {error}"
    except (redis.ConnectionError, redis.TimeoutError) as error:
        reason = str(error).rstrip(".").split(". ")[-1] or type(error).__name__
        return f"cannot join {where}: no Redis answers there ({reason})"
    except ValueError as error:  # not a redis:// URL
        return f"cannot join {where}: {error}"
    return None


def join(settings) -> int:
    """`settings.redis_url` is the gateway's Redis (--join)."""
    import time

    from impetus.server.process import stop_server
    from impetus.stack.identity import answers_as, new_stack_id
    from impetus.stack.lifeline import Record
    from impetus.stack.supervisor import StackError, StopOnSignal, Supervisor
    from impetus.stack.up import take_over, workers_component

    redis_url = settings.redis_url
    console = Console(stderr=True, soft_wrap=True)
    problem = check_join(redis_url)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    log_dir, run_dir = settings.data_dir / "logs", settings.data_dir / "run"
    for directory in (log_dir, run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    try:
        record = take_over(Record(run_dir, f"join-{settings.port}"),
                           f"another `impetus serve --join` (pid {{pid}}) serves port {settings.port} from "
                           f"{settings.data_dir}", [(settings.host, settings.port, "this host's workers", "--port")],
                           console)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    local = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    ready_url = f"http://{local}:{settings.port}/readyz"
    stack_id = new_stack_id()
    workers = workers_component(settings.port, log_dir, {**join_environment(settings, redis_url),
                                                         "IMPETUS_STACK_ID": stack_id},
                                lambda: answers_as(ready_url, stack_id))

    stop = StopOnSignal()

    def on_ready(component, again):
        if not again:
            console.print(f"[green]✓[/] joined as {settings.advertise_address}: {settings.workers} × "
                          f"{settings.model} on {settings.host}:{settings.port} (log: {log_dir / 'impetus.log'})")
            print(f"impetus host is up: {settings.advertise_address}", flush=True)

    supervisor = Supervisor([workers], log=lambda line: console.print(f"[yellow]![/] {line}"), run_dir=run_dir,
                            on_ready=on_ready, on_start=lambda component: record.started(component.name,
                                                                                         component.process))
    code = 0
    try:
        while not stop.requested:
            supervisor.step()
            time.sleep(0.2)
    except StackError as error:
        console.print(f"[red]error:[/] {error}")
        code = 1
    finally:
        if workers.process is not None:
            stop_server(workers.process, timeout=settings.graceful_timeout + 10)
        record.release()
    return code

