"""What a finished response owes (usage, the budget's spend, an audit entry),
kept on this machine until Redis has it on disk.

Why: usage was written to Redis once a response was over, and dropped with a
log line when Redis was away; and Redis with `appendfsync everysec`
acknowledges a write up to ~1 s before it is on disk, so a `kill -9` of Redis
lost that second of acknowledged usage too. A team that bills or budgets by
key must lose neither.

How, for each charge (one list of Redis writes, the "ops", with an id):
1. appended to this worker's spool file (`<data dir>/spool/<redis>/usage-<pid>.jsonl`,
   fsync'd) before the response's last chunk leaves; <redis> names the Redis it
   owes (a digest of its URL), so a charge is never replayed into another;
2. applied by one Lua script that runs the ops only if `impetus:applied:<id>`
   is new (SET NX, kept 7 days), so applying it again is a no-op;
3. held until it is on Redis' disk: with `appendfsync always` at once; with
   `everysec` once Redis still runs as the same process (its run_id)
   HOLD_EVERYSEC_S after the write (Redis fsyncs every second, and blocks
   writers once an fsync is 2 s late); with `no`, HOLD_NO_S (the OS's
   writeback). A Redis restart in between replays the charge: what reached
   the disk is skipped by its id, what did not is written again;
4. the file is cut down to what is still held.
Redis away: charges wait in the file (and in memory); only the worker's
loop retries, once a second (a response does not wait for Redis' timeout),
and they go in order once Redis answers. A worker that died leaves its
file; another worker takes it over (flock tells a live owner from a dead
one) and replays it.

Must not touch: what a charge is (gateway.account builds the ops with the
ledger's and the key store's own writes, gateway.audit an entry's).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from redis.exceptions import RedisError

log = logging.getLogger("impetus.gateway")

APPLIED_TTL_S = 7 * 86400
HOLD_EVERYSEC_S = 3.0
HOLD_NO_S = 35.0
RETRY_S = 1.0
ADOPT_EVERY_S = 5.0
APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for _, op in ipairs(cjson.decode(ARGV[2])) do redis.call(unpack(op)) end
return 1
"""


def spool_dir(data_dir: Path, redis_url: str) -> Path:
    """The spool for charges owed to the Redis at `redis_url`."""
    import hashlib

    return data_dir / "spool" / hashlib.sha256(redis_url.encode()).hexdigest()[:12]


class Ops:
    """Collects Redis writes as a pipeline would take them (the ledger's and
    the key store's `pipe=` argument), as lists of strings for the script."""

    def __init__(self):
        self.ops: list[list[str]] = []

    def _add(self, *args) -> None:
        self.ops.append([str(a) for a in args])

    def hincrby(self, key, field, amount=1):
        self._add("HINCRBY", key, field, int(amount))

    def incrby(self, key, amount=1):
        self._add("INCRBY", key, int(amount))

    def expire(self, key, seconds):
        self._add("EXPIRE", key, int(seconds))

    def hset(self, key, field=None, value=None, mapping=None):
        pairs = ([field, value] if field is not None else []) + [x for kv in (mapping or {}).items() for x in kv]
        self._add("HSET", key, *pairs)

    def xadd(self, stream, fields: dict, maxlen: int | None = None, approximate: bool = True):
        limit = ["MAXLEN", "~" if approximate else "=", maxlen] if maxlen else []
        self._add("XADD", stream, *limit, "*", *[x for kv in fields.items() for x in kv])


@dataclass
class Charge:
    id: str
    ops: list
    at: float
    applied_run: str | None = None  # the Redis run_id that took it
    applied_at: float = 0.0

    def line(self) -> str:
        return json.dumps({"id": self.id, "ops": self.ops, "at": self.at}, separators=(",", ":")) + "\n"


class UsageSpool:
    def __init__(self, directory: Path, redis, prefix: str = "impetus:", clock=time.monotonic):
        self.directory = directory
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self.pending: list[Charge] = []
        self._script = redis.register_script(APPLY)
        self._file = None
        self._down = False  # after a failed write, charges wait for the retry loop (step) instead of a timeout
        self._hold: dict[str, float] = {}  # run_id -> how long a write may wait for its fsync
        self._run: str | None = None  # the run id last seen
        self._next_adopt = 0.0

    @property
    def path(self) -> Path:
        return self.directory / f"usage-{os.getpid()}.jsonl"

    def _open(self):
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a+")
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._file.seek(0)
            self.pending.extend(_read(self._file.read()))  # a dead worker's of the same pid
        return self._file

    def add(self, ops: Ops | list, charge_id: str | None = None) -> bool:
        """Keep a charge (fsync'd), then try to write it to Redis now; False
        when Redis is away (it is written once Redis is back)."""
        charge = Charge(charge_id or uuid.uuid4().hex, ops.ops if isinstance(ops, Ops) else ops, time.time())
        try:
            self._append([charge])
        except OSError as error:  # a full disk: Redis alone, as before
            log.error("usage spool %s unwritable (%s): this charge rests on Redis alone", self.path, error)
        self.pending.append(charge)
        return not self._down and self._apply_pending(ask=False)

    def _append(self, charges: list[Charge]) -> None:
        """Onto this worker's file, on disk before this returns."""
        spool = self._open()
        spool.write("".join(c.line() for c in charges))
        spool.flush()
        os.fsync(spool.fileno())

    def _apply(self, charge: Charge, run_id: str) -> None:
        self._script(keys=[f"{self.prefix}applied:{charge.id}"],
                     args=[APPLIED_TTL_S, json.dumps(charge.ops)], client=self.redis)
        charge.applied_run, charge.applied_at = run_id, self.clock()

    def _run_id(self) -> str:
        """Redis' run id now (one round trip: the loop asks, a charge uses the last answer)."""
        run_id = self.redis.info("server")["run_id"]
        if run_id not in self._hold:
            self._hold[run_id] = self._fsync_hold()
        self._run = run_id
        return run_id

    def _fsync_hold(self) -> float:
        try:
            policy = self.redis.config_get("appendfsync").get("appendfsync", "everysec")
        except RedisError:  # CONFIG disabled (a managed Redis): assume the default
            policy = "everysec"
        return {"always": 0.0, "no": HOLD_NO_S}.get(policy, HOLD_EVERYSEC_S)

    def _apply_pending(self, ask: bool = True) -> bool:
        """Write what Redis has not taken (in order); False when Redis is away.
        `ask=False` (a response's own charge) labels the writes with the run id
        last seen: had Redis restarted since, the loop finds a new id and
        writes them again, which their ids make harmless."""
        try:
            run_id = self._run_id() if ask or self._run is None else self._run
            for charge in self.pending:
                if charge.applied_run != run_id:
                    self._apply(charge, run_id)
        except RedisError as error:
            if not self._down:
                log.warning("redis unavailable (%s): %d charge(s) kept in %s until it is back",
                            error, sum(c.applied_run is None for c in self.pending), self.path)
            self._down = True
            return False
        self._down = False
        return True

    def step(self) -> None:
        """Once a second: adopt dead workers' files, replay, and let go of what is on disk."""
        now = self.clock()
        if now >= self._next_adopt:
            self._next_adopt = now + ADOPT_EVERY_S
            self._adopt()
        if not self.pending or not self._apply_pending():
            return
        # The run id _apply_pending has just asked for; a restart since the writes made it write them again.
        run_id = self._run
        hold = self._hold[run_id]
        kept = [c for c in self.pending if c.applied_run != run_id or now - c.applied_at < hold]
        if len(kept) < len(self.pending):
            self.pending = kept
            self._rewrite()

    def run_forever(self, sleep=time.sleep) -> None:
        while True:
            try:
                self.step()
            except Exception:
                log.exception("usage spool step failed")
            sleep(RETRY_S)

    def _rewrite(self) -> None:
        """The file holds only what is pending; the new file is locked before it takes the name."""
        if self._file is None:
            return
        try:
            if not self.pending:
                self._file.truncate(0)
                os.fsync(self._file.fileno())
                return
            staging = self.path.with_suffix(".staging")
            new = open(staging, "a+")  # appended to from now on, as the file it replaces
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)
            new.truncate(0)  # a staging file left by a failed rewrite
            new.write("".join(c.line() for c in self.pending))
            new.flush()
            os.fsync(new.fileno())
            staging.replace(self.path)
            # `new` becomes the file, its lock held throughout: a lock is its open file's, so
            # opening the path again and locking that would fail against this very lock.
            old, self._file = self._file, new
            old.close()
        except OSError as error:
            log.error("usage spool %s could not be rewritten (%s)", self.path, error)

    def _adopt(self) -> None:
        """Files whose worker is gone (their lock is free) become this worker's."""
        try:
            files = sorted(self.directory.glob("usage-*.jsonl"))
        except OSError:
            return
        for path in files:
            if path == self.path:
                continue
            try:
                with open(path) as other:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    charges = _read(other.read())
                    if charges:
                        self._append(charges)
                        self.pending.extend(charges)
                        log.info("usage spool: took over %d charge(s) from %s", len(charges), path.name)
                    path.unlink()
            except BlockingIOError:
                continue  # its worker lives
            except OSError as error:
                log.warning("usage spool: cannot take over %s (%s)", path, error)


def _read(text: str) -> list[Charge]:
    charges = []
    for line in text.splitlines():
        try:
            item = json.loads(line)
            charges.append(Charge(item["id"], item["ops"], item["at"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash mid-write
    return charges
