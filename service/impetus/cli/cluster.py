"""`impetus cluster rotate-secret` and `impetus cluster join-command`, on the
gateway Mac (they read its data dir, as `impetus keys` does)."""

from __future__ import annotations

import sys

from redis.exceptions import RedisError

from impetus.gateway import connect
from impetus.gateway.audit import AuditEntry, record_from_cli
from impetus.gateway.guard import PREVIOUS_GRACE_S, ClusterSecret
from impetus.stack import cluster


def run(args, settings) -> None:
    if args.cluster_command == "rotate-secret":
        try:
            ClusterSecret(connect(settings.effective_redis_url)).rotate()
        except RedisError as error:
            sys.exit(f"error: the stack's Redis does not answer ({error}); is `impetus up --cluster` running?")
        record_from_cli(settings.effective_redis_url, AuditEntry("cluster.secret_rotated", "gateway secret"))
        print(f"rotated: the gateway's nginx takes the new secret within {cluster.WATCH_INTERVAL_S:g} s; "
              f"workers accept the old one for {PREVIOUS_GRACE_S:g} s more")
    elif args.cluster_command == "join-command":
        password = cluster.read_password(settings.data_dir)
        if password is None:
            sys.exit("error: this data dir has no cluster yet: start it with `impetus up --cluster`")
        url = cluster.join_url(password, args.cluster_address or cluster.lan_address(), args.redis_port)
        print(f"impetus serve --join {url} --advertise http://THIS-MAC:8081")
