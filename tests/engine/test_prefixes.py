"""The prefix cache's points and its disk tier, with the real default model:
a prompt's cache kept where prompts part, found again after a restart and by
another worker, and nothing damaged, foreign or half-written ever read."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from mlx_lm.models.cache import make_prompt_cache

from impetus.engine.engine import Engine
from impetus.engine.prefix_disk import DiskTier, fingerprint
from impetus.engine.request import SamplingParams
from impetus.engine.running import EngineStats
from impetus.engine.waiters import ThreadWaiter

from engine_events import tokens_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prompt(loaded_model) -> list[int]:
    text = " ".join(f"Rule {i}: the answer to question {i} is {i * 7 % 13}." for i in range(90))
    return loaded_model.tokenizer.encode(text)


def engine_over(loaded_model, settings, data_dir) -> Engine:
    engine = Engine(loaded_model, settings.model_copy(update={"data_dir": data_dir, "prefix_cache_disk_min_tokens": 512}))
    engine.start()
    return engine


def generate(engine, prompt, points=()) -> tuple[list[int], object]:
    return tokens_of(engine.submit(prompt, SamplingParams(max_tokens=8, temperature=0, keep_prefixes=list(points)),
                                   ThreadWaiter()))


def test_points_are_kept_and_read_back_after_a_restart_and_by_another_worker(loaded_model, settings, prompt,
                                                                             tmp_path):
    first = engine_over(loaded_model, settings, tmp_path)
    try:
        tokens, finish = generate(first, prompt, [600, len(prompt) - 1])
        stats = first.snapshot()
    finally:
        first.stop()
    assert finish.cached_tokens == 0 and stats["prefix_points"] == 2
    assert stats["prefix_cache_disk_entries"] == 2 and stats["prefix_disk_bytes_written"] > 0
    # A restart (or a second worker): an engine over the same folder with nothing in RAM.
    for _ in range(2):
        again = engine_over(loaded_model, settings, tmp_path)
        try:
            repeated, finish = generate(again, prompt)
            stats = again.snapshot()
        finally:
            again.stop()
        assert repeated == tokens
        assert finish.cached_tokens == len(prompt) - 1
        assert stats["prefilled_tokens"] == 1 and stats["prefix_hits_disk"] == 1
    # Another prompt parting from it after 700 tokens starts from the point at 600.
    other = prompt[:700] + loaded_model.tokenizer.encode(" Something else entirely.")
    third = engine_over(loaded_model, settings, tmp_path)
    try:
        _, finish = generate(third, other)
    finally:
        third.stop()
    assert finish.cached_tokens == 600


def cache_of(loaded_model, tokens):
    cache = make_prompt_cache(loaded_model.model)
    import mlx.core as mx

    mx.eval(loaded_model.model(mx.array([tokens]), cache=cache))
    return cache


def test_a_damaged_or_foreign_file_is_skipped_and_removed(loaded_model, prompt, tmp_path, caplog):
    ours, theirs = EngineStats(), EngineStats()
    tier = DiskTier(tmp_path, fingerprint(loaded_model.revision, "float32"), 2**30, ours)
    other = DiskTier(tmp_path, fingerprint("another-model", "float32"), 2**30, theirs)
    damaged, foreign = prompt[:40], prompt[:50]
    tier.store(damaged, cache_of(loaded_model, damaged))
    other.store(foreign, cache_of(loaded_model, foreign))
    assert tier.fetch(prompt, 0)[1] == 40
    # Truncate ours; put the other model's file where ours would be.
    [path] = tier.dir.glob("40-*.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    [theirs_path] = other.dir.glob("50-*.safetensors")
    os.replace(theirs_path, tier.dir / theirs_path.name)
    with caplog.at_level(logging.WARNING, logger="impetus.engine"):
        assert tier.fetch(prompt, 0) is None
    assert ours.disk_skipped == 2 and not list(tier.dir.glob("*.safetensors"))
    assert len([r for r in caplog.records if "skipping and removing" in r.message]) == 2


WRITER = """
import sys, mlx.core as mx
from mlx_lm.models.cache import KVCache
from impetus.engine.prefix_disk import DiskTier
from impetus.engine.running import EngineStats
tier = DiskTier(__import__("pathlib").Path(sys.argv[1]), "killed", 2**34, EngineStats())
layers = []
for _ in range(8):
    layer = KVCache()
    layer.update_and_fetch(mx.ones((1, 8, 2048, 128)), mx.ones((1, 8, 2048, 128)))
    layers.append(layer)
for value in range(1000):  # 128 MB files of 2,048 tokens each
    tier.store([value] * 2048, layers)
"""


def test_a_writer_killed_mid_write_leaves_nothing_that_is_read(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)])
    folder = tmp_path / "killed"
    deadline = time.monotonic() + 120
    try:
        while not (folder.exists() and any(n.startswith(".tmp-") for n in os.listdir(folder))):
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.01)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    stats = EngineStats()
    tier = DiskTier(tmp_path, "killed", 2**34, stats)
    [leftover] = [n for n in os.listdir(folder) if n.startswith(".tmp-")]
    assert set(tier.lengths()) <= {2048}
    for name in tier.lengths().get(2048, ()):  # every file under a real name is whole
        assert tier._load(folder / f"2048-{name}.safetensors", 2048) is not None
    tier.fetch([0] * 2049, 0)
    assert stats.disk_skipped == 0
    # The half-written file is removed once stale, when the next write makes room.
    os.utime(folder / leftover, (0, 0))
    tier._make_room(1)
    assert leftover not in os.listdir(folder)


def test_the_budget_removes_the_least_recently_used(loaded_model, prompt, tmp_path):
    stats = EngineStats()
    first = prompt[:30]
    size = sum(c.nbytes for c in cache_of(loaded_model, first))
    tier = DiskTier(tmp_path, "budget", int(size * 2.5), stats)
    for length in (30, 31, 32):
        tier.store(prompt[:length], cache_of(loaded_model, prompt[:length]))
        time.sleep(0.01)
    assert sorted(tier.lengths()) == [31, 32] and stats.disk_evicted == 1


def test_a_folder_that_cannot_be_written_leaves_ram_only(loaded_model, prompt, tmp_path, caplog):
    (tmp_path / "not-a-folder").write_text("")
    with caplog.at_level(logging.WARNING, logger="impetus.engine"):
        tier = DiskTier(tmp_path / "not-a-folder", "x", 2**30, EngineStats())
    assert not tier.enabled and "RAM only" in caplog.text
    tier.store(prompt[:30], cache_of(loaded_model, prompt[:30]))  # nothing, and no error
    assert tier.fetch(prompt, 0) is None
