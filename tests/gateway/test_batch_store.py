"""gateway.batches' chunks on a real redis-server: the workers of every host
claim a batch's lines CHUNK at a time, never the same chunk twice while its
holder lives; a dead holder's unanswered lines go to another; the output is
written once."""

from __future__ import annotations

import uuid

from impetus.gateway.batches import CHUNK, BatchStore


def made(redis_server, lines: int) -> tuple[BatchStore, str]:
    store = BatchStore(redis_server.client(), prefix=f"test-{uuid.uuid4().hex[:8]}:")
    batch_id = f"batch_{uuid.uuid4().hex[:8]}"
    store.create(batch_id, "owner", {"created_at": 1, "status": "in_progress"},
                 [{"custom_id": f"c-{n}"} for n in range(lines)], active=True)
    return store, batch_id


def none_dead(holder: str) -> bool:
    """`dead` where every holder lives."""
    return False


def test_hosts_claim_disjoint_chunks_that_cover_the_batch(redis_server):
    total = 3 * CHUNK + 5
    store, batch_id = made(redis_server, total)
    assert [x["custom_id"] for x in store.lines(batch_id)] == [f"c-{n}" for n in range(total)]
    claims = {"mac-1|10": [], "mac-2|20": []}
    while True:
        took = {holder: store.claim(batch_id, holder, total, none_dead) for holder in claims}
        if all(start is None for start in took.values()):
            break
        for holder, start in took.items():
            if start is not None:
                claims[holder].append(start)
    starts = sorted(s for held in claims.values() for s in held)
    assert starts == list(range(0, total, CHUNK)) and all(claims.values())  # each once, both hosts got some
    assert store.held(batch_id, none_dead)


def test_a_dead_holders_unanswered_lines_go_to_another_and_answered_chunks_stay_done(redis_server):
    total = 2 * CHUNK
    store, batch_id = made(redis_server, total)
    first = store.claim(batch_id, "mac-1|10", total, none_dead)
    second = store.claim(batch_id, "mac-2|20", total, none_dead)
    for number in range(second, second + CHUNK):
        store.answer(batch_id, number, {"n": number}, failed=False)
    store.release(batch_id, second, "mac-2|20")
    for number in range(first, first + 3):
        store.answer(batch_id, number, {"n": number}, failed=False)
    # mac-1 lives: its chunk is not taken, and the answered chunk is nobody's to run again
    assert store.claim(batch_id, "mac-2|20", total, none_dead) is None
    # mac-1 is gone: its chunk goes to mac-2, with only the lines it left to run
    assert store.claim(batch_id, "mac-2|20", total, lambda holder: holder == "mac-1|10") == first
    assert store.unanswered(batch_id, range(first, first + CHUNK)) == list(range(first + 3, first + CHUNK))
    assert store.record(batch_id)["completed"] == CHUNK + 3  # nothing counted twice
    store.release(batch_id, first, "mac-2|20")
    assert not store.held(batch_id, none_dead)


def test_the_output_is_written_by_one_worker_once(redis_server):
    store, batch_id = made(redis_server, 4)
    assert store.finalize(batch_id, "mac-1|10", none_dead)
    assert not store.finalize(batch_id, "mac-2|20", none_dead)
    assert store.finalize(batch_id, "mac-2|20", lambda holder: holder == "mac-1|10")  # it died mid-way
    store.set_status(batch_id, "completed")
    assert store.lines(batch_id) == [] and batch_id not in store.active()
