from __future__ import annotations

import time

import pytest

from impetus.gateway.keys import KEY_PREFIX, KeyExists, KeyNotFound, KeyStore, hash_key


def test_create_verify_list_revoke(redis_client):
    store = KeyStore(redis_client)
    key, record = store.create("alice", rpm=10)
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    assert store.verify(key) == record
    assert record.rpm == 10 and record.tpm is None and not record.admin
    admin_key, admin = store.create("ops", admin=True)
    assert admin.scopes == ["inference", "admin"]
    assert [r.name for r, _ in store.list()] == ["alice", "ops"]
    store.revoke("alice")
    assert store.verify(key) is None
    assert store.verify(admin_key) == admin
    with pytest.raises(KeyNotFound):
        store.revoke("alice")


def test_only_the_hash_is_stored(redis_client):
    store = KeyStore(redis_client)
    key, _ = store.create("bob")
    store.record_usage(hash_key(key), 5, 7)
    everything = []
    for name in redis_client.scan_iter("*"):
        everything.append(name)
        kind = redis_client.type(name)
        if kind == "hash":
            everything += list(redis_client.hgetall(name).values())
        elif kind == "string":
            everything.append(redis_client.get(name))
        elif kind == "set":
            everything += list(redis_client.smembers(name))
    assert not any(key in str(value) for value in everything)
    assert any(hash_key(key) in str(value) for value in everything)


def test_unknown_malformed_and_expired_keys_are_refused(redis_client):
    store = KeyStore(redis_client)
    assert store.verify("imp_" + "x" * 43) is None
    assert store.verify("sk-not-ours") is None
    key, _ = store.create("short-lived", expires_days=1 / 86400 / 10)  # 0.1 s
    time.sleep(0.2)
    assert store.verify(key) is None


def test_names_are_unique(redis_client):
    store = KeyStore(redis_client)
    store.create("carol")
    with pytest.raises(KeyExists):
        store.create("carol")


def test_usage_is_accumulated(redis_client):
    store = KeyStore(redis_client)
    key, record = store.create("dave")
    store.record_usage(record.hash, 10, 3)
    store.record_usage(record.hash, 5, 2)
    (_, usage), = store.list()
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == ("2", "15", "5")


def test_export_and_import_restore_keys_and_usage(redis_client, tmp_path):
    import json
    import subprocess
    import sys

    store = KeyStore(redis_client)
    alice, record = store.create("alice", rpm=7)
    admin, _ = store.create("ops", admin=True)
    store.record_usage(record.hash, 11, 22)
    url = redis_client.connection_pool.connection_kwargs
    env = {"IMPETUS_REDIS_URL": f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}"}
    backup = tmp_path / "keys.json"
    cli = [sys.executable, "-m", "impetus", "keys"]
    import os

    done = subprocess.run([*cli, "export", "-o", str(backup)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)
    assert done.returncode == 0, done.stderr
    text = backup.read_text()
    assert alice not in text and admin not in text  # hashes only
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    assert len(json.loads(text)["keys"]) == 2

    redis_client.flushdb()  # the Redis is lost
    assert store.verify(alice) is None
    restored = subprocess.run([*cli, "import", str(backup)], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=60)
    assert restored.returncode == 0 and "restored 2 keys" in restored.stderr, restored.stderr
    back = store.verify(alice)
    assert back is not None and back.rpm == 7 and store.verify(admin).admin
    usage = dict(store.list())
    assert {k.name: u for k, u in usage.items()}["alice"]["completion_tokens"] == "22"
    again = subprocess.run([*cli, "import", str(backup)], capture_output=True, text=True,
                           env={**os.environ, **env}, timeout=60)
    assert "restored 0 keys, kept 2" in again.stderr
    assert len(store.list()) == 2
