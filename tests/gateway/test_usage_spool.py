"""The usage spool against a real redis-server: a charge is written once
however often it is replayed, waits while Redis is away, survives a
`kill -9` of Redis with `appendfsync everysec`, and a dead worker's file is
taken over."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import redis

from impetus.gateway import connect
from impetus.gateway.spool import Ops, UsageSpool
from impetus.server.process import free_port


class Redis:
    """redis-server with an append-only file fsync'd every second, as the stack runs it."""

    def __init__(self, directory):
        self.directory, self.port = directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline and self.process.poll() is None, "redis-server did not start"
                time.sleep(0.05)

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def server(tmp_path):
    found = Redis(tmp_path)
    found.start()
    yield found
    if found.process.poll() is None:
        found.kill()


def spool_on(server, tmp_path) -> UsageSpool:
    """A spool whose clock runs 20× fast: the holds and retries are what is tested, not their length."""
    return UsageSpool(tmp_path / "spool", connect(server.url, read_timeout=5), clock=lambda: time.monotonic() * 20)


def charge(tokens: int) -> Ops:
    ops = Ops()
    ops.hincrby("impetus:usage:k", "requests", 1)
    ops.hincrby("impetus:usage:k", "prompt_tokens", tokens)
    ops.incrby("impetus:spent:k", tokens)
    return ops


def totals(url: str) -> tuple[int, int]:
    client = connect(url)
    return int(client.hget("impetus:usage:k", "requests") or 0), int(client.get("impetus:spent:k") or 0)


def settle(spool: UsageSpool, timeout: float = 15) -> None:
    """Step as the worker's loop does until nothing is held."""
    deadline = time.monotonic() + timeout
    while spool.pending:
        assert time.monotonic() < deadline, f"{len(spool.pending)} charge(s) still held"
        spool.step()
        time.sleep(0.2)


def test_a_charge_counts_once_however_often_it_is_replayed(server, tmp_path):
    spool = spool_on(server, tmp_path)
    assert spool.add(charge(7), "request-1")
    assert totals(server.url) == (1, 7)
    line = spool.path.read_text()
    assert json.loads(line)["id"] == "request-1"
    # Another worker replays the same file (its owner died before the charge was confirmed).
    other = tmp_path / "spool" / "usage-1.jsonl"
    other.write_text(line)
    spool._adopt()
    assert not other.exists()
    settle(spool)
    assert totals(server.url) == (1, 7)
    assert spool.path.read_text() == ""  # nothing held: the file is empty


def test_charges_wait_while_redis_is_away_and_go_in_when_it_is_back(server, tmp_path):
    spool = spool_on(server, tmp_path)
    assert spool.add(charge(3))
    server.kill()
    assert not spool.add(charge(4))
    assert not spool.add(charge(5))  # no connect attempt: the retry loop's turn
    assert len(spool.path.read_text().splitlines()) == 3
    server.start()
    settle(spool)
    # The first charge's write may or may not have reached the disk before the kill: either way it counts once.
    assert totals(server.url) == (3, 12)


def test_nothing_acknowledged_is_lost_when_redis_loses_its_last_second(server, tmp_path):
    spool = spool_on(server, tmp_path)
    for tokens in range(1, 201):
        assert spool.add(charge(tokens))
    assert totals(server.url) == (200, 20100)
    server.kill()
    # What `everysec` loses when the machine goes down with Redis (a kill -9 alone
    # leaves the written pages to the OS): the file's tail that was not fsync'd yet.
    tail = max((server.directory / "appendonlydir").glob("*.incr.aof"), key=lambda p: p.stat().st_size)
    with open(tail, "r+b") as aof:
        aof.truncate(tail.stat().st_size * 2 // 3)
    server.start()
    survived = totals(server.url)[0]
    assert survived < 200, "the cut tail held nothing"
    print(f"a Redis that lost the last third of its append-only file kept {survived} of 200 charges")
    settle(spool)
    assert totals(server.url) == (200, 20100)


def test_a_worker_killed_with_charges_held_leaves_them_to_another(server, tmp_path):
    code = ("import sys, os; from impetus.gateway import connect; from impetus.gateway.spool import UsageSpool, Ops\n"
            f"spool = UsageSpool(__import__('pathlib').Path({str(tmp_path / 'spool')!r}), connect({server.url!r}))\n"
            "ops = Ops(); ops.incrby('impetus:spent:k', 11); spool.add(ops)\n"
            "print(spool.path, flush=True); os._exit(0)\n")
    server.kill()  # the dying worker could not write it
    path = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert json.loads(open(path).read())["ops"] == [["INCRBY", "impetus:spent:k", "11"]]
    server.start()
    survivor = spool_on(server, tmp_path)
    survivor.step()
    settle(survivor)
    assert totals(server.url) == (0, 11)


def test_an_audit_entry_made_while_redis_is_away_is_written_once_when_it_is_back(server, tmp_path):
    from impetus.gateway.audit import AuditEntry, AuditLog

    spool = spool_on(server, tmp_path)
    server.kill()
    ops = Ops()
    AuditLog(None).record("alice", AuditEntry("key.created", "bob", {"rpm": 5}), "10.0.0.7", writer=ops)
    assert not spool.add(ops)
    server.start()
    settle(spool)
    [entry] = AuditLog(connect(server.url)).latest()
    assert (entry["who"], entry["action"], entry["target"], entry["address"], entry["detail"]) == (
        "alice", "key.created", "bob", "10.0.0.7", {"rpm": 5})


def test_letting_go_of_some_charges_keeps_the_rest_and_the_files_lock(server, tmp_path, caplog):
    """The file is rewritten with what is still held; it stays this worker's
    (locked: no other worker adopts it) and takes the next charges."""
    import fcntl

    spool = spool_on(server, tmp_path)
    assert spool.add(charge(1), "old")
    time.sleep(0.3)  # past its hold on the spool's 20x clock
    assert spool.add(charge(2), "new")
    spool.step()
    assert "could not be rewritten" not in caplog.text
    assert [json.loads(line)["id"] for line in spool.path.read_text().splitlines()] == ["new"]
    with open(spool.path) as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert spool.add(charge(3), "next")
    assert [json.loads(line)["id"] for line in spool.path.read_text().splitlines()] == ["new", "next"]
    settle(spool)
    assert totals(server.url) == (3, 6) and spool.path.read_text() == ""
