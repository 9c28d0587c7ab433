"""Which stack answers: `impetus up`'s run id, and ports held by others.

Why: `up` found its workers by a fixed port (8081) and took any answer
there for its own. Beside a running stack (`make run`, the installed
service) a second `up` printed "workers ready", proxied every request to the
first stack's workers, and checked its keys against the first one's Redis.

Now each run of `up` makes an id and gives it to its workers
(IMPETUS_STACK_ID); /healthz and /readyz report it, and a component is ready
only when the answer carries this run's id (impetus.stack.up). The workers
listen on a unix socket in the run dir, so there is no port to share; the
ports a stack must have (nginx's, a cluster's Redis) are checked before
anything starts, and a held one is one line naming the holder.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

from impetus.system.info import find_program


def new_stack_id() -> str:
    return uuid.uuid4().hex[:16]


def answers_as(url: str, stack_id: str, uds: Path | None = None, verify=True) -> bool:
    """`url` answers 200 with this stack's id (over the unix socket `uds`, if given)."""
    import httpx

    transport = httpx.HTTPTransport(uds=str(uds)) if uds is not None else None
    try:
        with httpx.Client(transport=transport, verify=verify, timeout=1) as client:
            answer = client.get(url)
        return answer.status_code == 200 and answer.json().get("stack") == stack_id
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def port_holder(host: str, port: int) -> str | None:
    """None when `port` can be bound on `host`; else who holds it, as far as
    the OS tells this user ("nginx (pid 812)"), or "another program"."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx binds: TIME_WAIT is no holder
        try:
            probe.bind((host, port))
            return None
        except OSError:
            pass
    lsof = find_program("lsof")
    if lsof is not None:
        found = subprocess.run([lsof, "-nP", f"-iTCP:{port}", "-sTCP:LISTEN", "-Fpc"], capture_output=True,
                               text=True).stdout.splitlines()
        pids = [line[1:] for line in found if line.startswith("p")]
        names = [line[1:] for line in found if line.startswith("c")]
        if pids:
            return f"{names[0] if names else 'a program'} (pid {pids[0]})"
    return "another program"


def check_port(host: str, port: int, what: str, flag: str) -> str | None:
    """One line when `port` is taken, else None."""
    holder = port_holder(host, port)
    if holder is None:
        return None
    return f"port {port} on {host} ({what}) is already in use by {holder}; stop it, or choose another port with {flag}"
