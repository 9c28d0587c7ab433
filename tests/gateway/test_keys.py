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
