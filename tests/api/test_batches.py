"""OpenAI's Batch API (api.batches, api.batch_runner) through nginx with two keys, as the openai
SDK scripts it: upload a JSONL file, create, poll to completed, download; each greedy answer is
the same request's answer sent directly; cancel mid-way keeps what was done; another key sees
nothing; a malformed file fails at validation naming its lines."""

from __future__ import annotations

import io
import json
import time

import httpx
import openai
import pytest

from impetus.gateway.keys import KeyStore
from impetus.models.store import DEFAULT_MODEL

pytestmark = pytest.mark.slow

QUESTIONS = ["What is the capital of France?", "Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit."]


@pytest.fixture(scope="module")
def clients(gateway_proxy, redis_server):
    store = KeyStore(redis_server.client())
    made = [store.create(name, rpm=100_000, tpm=100_000_000)[0] for name in ("batch-owner", "batch-other")]
    return [openai.OpenAI(base_url=f"{gateway_proxy}/v1", api_key=key, max_retries=0, timeout=120) for key in made]


def jsonl(lines: list[dict]) -> io.BytesIO:
    return io.BytesIO(("\n".join(json.dumps(line) for line in lines) + "\n").encode())


def chat_line(number: int, question: str, max_tokens: int = 12) -> dict:
    return {"custom_id": f"q-{number}", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": DEFAULT_MODEL, "max_tokens": max_tokens, "temperature": 0,
                     "messages": [{"role": "user", "content": question}]}}


def wait(client, batch_id: str, statuses=("completed", "failed", "cancelled", "expired"), timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)


def batch_lines_counted(gateway_server, status: str) -> float:
    text = httpx.get(f"{gateway_server}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(f'impetus_batch_requests_total{{status="{status}"}}'))


def test_a_batch_runs_and_each_answer_is_the_direct_one(clients, gateway_server):
    owner, other = clients
    counted = batch_lines_counted(gateway_server, "completed"), batch_lines_counted(gateway_server, "failed")
    lines = [chat_line(n, q) for n, q in enumerate(QUESTIONS)]
    lines.append({**chat_line(99, "x"), "body": {**chat_line(99, "x")["body"], "max_tokens": -3}})
    upload = owner.files.create(file=("questions.jsonl", jsonl(lines)), purpose="batch")
    batch = owner.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
                                 metadata={"job": "smoke"})
    assert batch.status in ("validating", "in_progress") and batch.request_counts.total == 6
    done = wait(owner, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 5 and done.request_counts.failed == 1
    assert done.metadata == {"job": "smoke"} and done.completed_at >= done.created_at
    assert (batch_lines_counted(gateway_server, "completed"), batch_lines_counted(gateway_server, "failed")) == (
        counted[0] + 5, counted[1] + 1)
    output = [json.loads(row) for row in owner.files.content(done.output_file_id).text.splitlines()]
    assert [row["custom_id"] for row in output] == [f"q-{n}" for n in range(5)]
    for row, question in zip(output, QUESTIONS):
        direct = owner.chat.completions.create(model=DEFAULT_MODEL, max_tokens=12, temperature=0,
                                               messages=[{"role": "user", "content": question}])
        assert row["response"]["status_code"] == 200
        assert row["response"]["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
    [failed] = [json.loads(row) for row in owner.files.content(done.error_file_id).text.splitlines()]
    assert failed["custom_id"] == "q-99" and failed["response"]["status_code"] == 400
    assert "max_tokens" in json.dumps(failed["response"]["body"])
    # Another key: not found, not listed, not cancellable.
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch.id)
    assert batch.id not in {b.id for b in other.batches.list()} and batch.id in {b.id for b in owner.batches.list()}


def test_cancel_mid_way_keeps_what_was_done(clients, gateway_proxy, redis_server):
    owner, _ = clients
    admin = KeyStore(redis_server.client()).create("batch-admin", admin=True)[0]
    # The first line is short, so that one is done while the others still run.
    lines = [chat_line(n, f"Write a long story about the number {n}.", max_tokens=2 if n == 0 else 48)
             for n in range(40)]  # two workers run 16 each at once: some are left when the cancel comes
    upload = owner.files.create(file=("stories.jsonl", jsonl(lines)), purpose="batch")
    batch = owner.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while owner.batches.retrieve(batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    status = httpx.get(f"{gateway_proxy}/v1/status", headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()
    [shown] = [b for b in status["batches"] if b["id"] == batch.id]  # the operator sees it run
    assert shown["status"] == "in_progress" and shown["request_counts"]["total"] == 40
    assert owner.batches.cancel(batch.id).status in ("cancelling", "cancelled")
    done = wait(owner, batch.id)
    assert done.status == "cancelled" and done.cancelled_at and 1 <= done.request_counts.completed < 40
    trail = httpx.get(f"{gateway_proxy}/v1/admin/audit", params={"action": "batch."}, timeout=30,
                      headers={"Authorization": f"Bearer {admin}"}).json()["data"]
    assert {e["action"] for e in trail if e["target"] == batch.id} == {"batch.created", "batch.cancelled"}
    answered = owner.files.content(done.output_file_id).text.splitlines()
    assert len(answered) == done.request_counts.completed
    assert len({json.loads(row)["custom_id"] for row in answered}) == len(answered)


def test_a_malformed_file_fails_at_validation_naming_its_lines(clients):
    owner, _ = clients
    text = "\n".join([json.dumps(chat_line(0, "a")), "{not json", json.dumps(chat_line(0, "again")),
                      json.dumps({**chat_line(3, "b"), "url": "/v1/embeddings"})])
    upload = owner.files.create(file=("bad.jsonl", io.BytesIO(text.encode())), purpose="batch")
    batch = owner.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed"
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "mismatched_endpoint")]
    searchable = owner.files.create(file=("notes.md", io.BytesIO(b"# notes")), purpose="assistants")
    with pytest.raises(openai.BadRequestError):
        owner.batches.create(input_file_id=searchable.id, endpoint="/v1/chat/completions", completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        owner.batches.create(input_file_id=upload.id, endpoint="/v1/images", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        owner.batches.create(input_file_id="file-none", endpoint="/v1/chat/completions", completion_window="24h")


def test_a_batch_stops_at_its_keys_budget(gateway_proxy, redis_server):
    key, _ = KeyStore(redis_server.client()).create("batch-budget", rpm=100_000, tpm=100_000_000, budget_tokens=400)
    client = openai.OpenAI(base_url=f"{gateway_proxy}/v1", api_key=key, max_retries=0, timeout=120)
    # ~45 tokens each: ~2,200 in all. Up to 16 lines run at once, each admitted while the budget
    # is not yet spent, so the budget stops the batch about two waves in.
    lines = [chat_line(n, f"Name the number {n}.") for n in range(48)]
    upload = client.files.create(file=("many.jsonl", jsonl(lines)), purpose="batch")
    done = wait(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                              completion_window="24h").id)
    counts = done.request_counts
    assert done.status == "completed" and counts.completed >= 1 and counts.failed >= 10
    assert counts.completed + counts.failed == 48
    failed = [json.loads(row) for row in client.files.content(done.error_file_id).text.splitlines()]
    assert {row["error"]["code"] for row in failed if row["error"]} == {"budget_exceeded"}
