"""A LAN on one machine: a bridge in this network namespace (the gateway's
side, with an address for nginx's traffic to the hosts and one for the
cluster's Redis) and a namespace per host, joined by veth pairs, each host
with its own address. Faults are routes inside a host's namespace:
`cut(host, address)` makes everything the host sends to that address vanish
(a blackhole route: no reset, no error on the wire, its sockets stay open),
so the gateway sees a host that stopped answering, or a host loses only the
gateway's Redis. Needs root and iproute2 (CI and these machines have both)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if sys.platform != "linux":
        return "network namespaces are Linux's"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"impprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"


class Lan:
    def __init__(self):
        tag = os.getpid() % 100000
        self.tag = tag
        self.prefix = f"10.{100 + tag % 100}.{tag % 250}"  # a /24 of its own per run
        self.bridge = f"ib{tag}"
        self.gateway = f"{self.prefix}.1"  # nginx's side
        self.redis = f"{self.prefix}.2"  # the cluster's Redis
        self.hosts: dict[str, str] = {}  # namespace -> address
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        ip("addr", "add", f"{self.redis}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add_host(self, index: int) -> tuple[str, str]:
        """A namespace for host `index`, at PREFIX.(10 + index); its name and address."""
        namespace, address = f"imp{self.tag}h{index}", f"{self.prefix}.{10 + index}"
        ip("netns", "add", namespace)
        self.hosts[namespace] = address
        outside = f"iv{self.tag}h{index}"
        ip("link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        ip("link", "set", outside, "master", self.bridge)
        ip("link", "set", outside, "up")
        ip("addr", "add", f"{address}/24", "dev", "eth0", namespace=namespace)
        ip("link", "set", "eth0", "up", namespace=namespace)
        ip("link", "set", "lo", "up", namespace=namespace)
        return namespace, address

    def cut(self, namespace: str, *addresses: str) -> None:
        for address in addresses:
            ip("route", "add", "blackhole", f"{address}/32", namespace=namespace)

    def mend(self, namespace: str, *addresses: str) -> None:
        for address in addresses:
            ip("route", "del", "blackhole", f"{address}/32", namespace=namespace)

    @staticmethod
    def run_in(namespace: str) -> list[str]:
        """The command prefix that runs `impetus` inside a host's namespace."""
        return ["ip", "netns", "exec", namespace, sys.executable, "-m", "impetus"]

    def close(self) -> None:
        for namespace in self.hosts:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
