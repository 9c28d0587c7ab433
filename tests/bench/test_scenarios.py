"""The load, peer and soak benchmarks, each run small for real (real redis,
Gunicorn workers, nginx, and mlx_lm.server as the peer): what they write is
what the closing notes quote, so the numbers must come from real traffic.
No speed is asserted here, only that the figures are there and add up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from impetus.bench.soak import slope_per_minute, summarize
from impetus.bench.traffic import percentile, process_tree, process_use

PNG = b"\x89PNG\r\n\x1a\n"


def bench(*args, data_dir, out, timeout=600) -> dict:
    result = subprocess.run([sys.executable, "-m", "impetus", "bench", *args, "--data-dir", str(data_dir),
                             "--out", str(out), "--json"], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def written(out, scenario: str) -> dict:
    [json_file] = out.glob(f"*-{scenario}-*.json")
    [png_file] = out.glob(f"*-{scenario}-*.png")
    assert png_file.read_bytes().startswith(PNG) and png_file.stat().st_size > 10_000
    return json.loads(json_file.read_text())


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 95) == 95 and percentile(values, 99) == 99
    assert percentile([3.0], 99) == 3.0 and percentile([], 50) is None


def test_slope_and_summary_see_a_leak_and_a_flat_line():
    ts = [float(t) for t in range(0, 600, 5)]
    leaking = [{"t": t, "server_rss_bytes": 100 * 2**20 + int(t * 2**20 / 60), "server_open_files": 30}
               for t in ts]  # +1 MiB a minute, open files flat
    summary = summarize(leaking, ["server"])
    assert summary["server_mib_per_minute_second_half"] == pytest.approx(1.0, rel=0.01)
    assert summary["server_files_per_minute_second_half"] == pytest.approx(0.0, abs=1e-9)
    assert summary["server_mib_last_fifth"] > summary["server_mib_first_fifth"] + 7
    assert slope_per_minute([0.0], [1.0]) is None


def test_process_use_counts_a_process_tree():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                              "time.sleep(30)"])
    try:
        import time

        deadline = time.monotonic() + 10
        while len(process_tree(child.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = process_tree(child.pid)
        assert len(pids) == 2 and pids[0] == child.pid
        use = process_use(pids)
        assert use.rss_bytes > 2 * 5 * 2**20  # two Python interpreters
        assert use.open_files is None or use.open_files >= 6  # stdin/out/err each
    finally:
        subprocess.run(["pkill", "-P", str(child.pid)])
        child.kill()
        child.wait()


@pytest.mark.slow
def test_load_ramp_through_nginx_counts_tokens_limits_and_memory(data_dir, tmp_path):
    summary = bench("--scenario", "load", "--levels", "1,20", "--duration", "3", "--max-tokens", "4",
                    data_dir=data_dir, out=tmp_path)
    assert summary == written(tmp_path, "load")
    one, twenty = summary["levels"]
    assert (one["concurrency"], twenty["concurrency"]) == (1, 20)
    for level in (one, twenty):
        assert level["requests"] == level["ok"] + sum(level["errors"].values())
        assert level["generated_tokens"] > 0 and level["tokens_per_s"] > 0
        assert level["ttft_p50_s"] <= level["ttft_p95_s"] <= level["ttft_p99_s"]
        assert level["peak_rss_bytes"]["server"] > 100 * 2**20
        assert set(level["peak_rss_bytes"]) == {"redis", "server", "nginx"}
    # clients 9 and 19 share a key that allows 1 request a minute: refused with 429
    assert twenty["errors"].get("429", 0) >= 1
    assert set(twenty["errors"]) <= {"429", "503"}  # nothing but refusals by design


@pytest.mark.slow
def test_peer_runs_both_servers_on_the_same_float32_weights(data_dir, tmp_path):
    summary = bench("--scenario", "peer", "--levels", "1,2", "--requests-per-client", "1", "--max-tokens", "6",
                    "--pairings", "same weights", data_dir=data_dir, out=tmp_path)
    written(tmp_path, "peer")
    [pairing] = summary["pairings"]
    assert pairing["pairing"] == "same weights" and pairing["folder"].endswith("-float32")
    assert [row["concurrency"] for row in pairing["rows"]] == [1, 2]
    for row in pairing["rows"]:
        for side in ("impetus", "mlx_lm_server"):
            assert row[side]["errors"] == {}, row
            assert row[side]["requests"] == row["concurrency"]
            assert row[side]["tokens"] == 6 * row["concurrency"]  # greedy, max_tokens each
        assert row["throughput_ratio"] == pytest.approx(
            row["impetus"]["tokens_per_s"] / row["mlx_lm_server"]["tokens_per_s"])


@pytest.mark.slow
def test_soak_records_memory_and_open_files_over_time(data_dir, tmp_path):
    summary = bench("--scenario", "soak", "--duration", "8", "--concurrency", "2", "--max-tokens", "4",
                    data_dir=data_dir, out=tmp_path)
    result = written(tmp_path, "soak")
    assert result["requests"] == summary["requests"] > 0 and result["errors"] == {}
    assert len(result["samples"]) >= 2
    for name in ("server", "nginx", "redis"):
        assert all(sample[f"{name}_rss_bytes"] > 0 for sample in result["samples"])
        assert f"{name}_mib_per_minute_second_half" in result["summary"]


@pytest.mark.slow
def test_fairness_runs_the_fair_scheduler_and_fifo_on_the_real_stack(data_dir, tmp_path):
    # The flood (4 x 48 tokens) outlasts the second before key B starts asking.
    summary = bench("--scenario", "fairness", "--flood", "4", "--max-tokens", "48", "--probes", "2",
                    "--probe-interval", "0.5", data_dir=data_dir, out=tmp_path)
    assert summary["runs"] == written(tmp_path, "fairness")["runs"]
    assert [run["scheduler"] for run in summary["runs"]] == ["fair", "fifo"]
    for run in summary["runs"]:
        assert run["errors"] == {} and run["b_probes"] >= 1 and run["tokens"] >= 4 * 48
        assert run["b_slowdown_p50"] == pytest.approx(run["b_flood_ttft_p50_s"] / run["b_alone_ttft_p50_s"])
    fair, fifo = summary["runs"]
    assert summary["throughput_vs_fifo"] == pytest.approx(fair["tokens_per_s"] / fifo["tokens_per_s"])


@pytest.mark.slow
def test_shared_prefix_counts_the_prefill_work_against_the_peer(data_dir, tmp_path):
    summary = bench("--scenario", "shared-prefix", "--levels", "3", "--prompt-tokens", "400", "--max-tokens", "4",
                    "--servers", "impetus,mlx_lm.server", data_dir=data_dir, out=tmp_path)
    written(tmp_path, "shared-prefix")
    [ours], [peer] = summary["series"]["impetus"], summary["series"]["mlx_lm.server"]
    assert ours["errors"] == {} and peer["errors"] == {} and ours["n"] == peer["n"] == 3
    # Three prompts sharing ~400 tokens: computed about once, the rest from the prefix cache
    # (copied from a request in flight, or kept where its system prompt ends).
    assert ours["shared_prefixes"] + ours["prefix_points"] >= 1
    assert ours["prefilled_tokens"] < ours["prompt_tokens"] / 2, ours
    assert summary["ttft_p50_vs_mlx_lm_server"]["3"] == pytest.approx(peer["ttft_p50_s"] / ours["ttft_p50_s"])


@pytest.mark.slow
def test_cluster_measures_the_hop_and_the_split_over_two_hosts(data_dir, tmp_path):
    summary = bench("--scenario", "cluster", "--levels", "16", "--duration", "2", "--max-tokens", "4",
                    "--hop-rounds", "8", data_dir=data_dir, out=tmp_path)
    written(tmp_path, "cluster")
    hop = summary["hop"]
    assert hop["rounds"] == 8
    for name in ("models_direct", "models_gateway", "chat_direct", "chat_gateway"):
        assert hop[f"{name}_p50_ms"] > 0
    assert hop["models_hop_ms"] == pytest.approx(hop["models_gateway_p50_ms"] - hop["models_direct_p50_ms"])
    [one], [two] = summary["one_host"], summary["two_hosts"]
    assert one["errors"] == {} and two["errors"] == {} and one["ok"] > 0 and two["ok"] > 0
    assert len(one["by_host"]) == 1 and sum(one["by_host"].values()) == one["ok"]
    # Sixteen keys, hashed: all on one host once in 2^15 runs.
    assert len(two["by_host"]) == 2 and sum(two["by_host"].values()) == two["ok"]


def test_agents_builds_each_persons_claude_code_request_and_its_chat_twin():
    """The agents scenario's sessions (measured in benchmarks/README.md, not
    here: a run prefills ~20k-token prompts): each person's request is the
    captured one with their own paths, question and billing header, and
    mlx_lm.server is sent the same conversation as chat completions."""
    from impetus.bench.agents import as_chat, first_request

    one, two = first_request(0, "m", 16), first_request(1, "m", 16)
    assert "{" + "home}" not in json.dumps(one) and len(one["tools"]) == 21 and one["max_tokens"] == 16
    assert one["tools"] == two["tools"] and one["system"][1:] != two["system"][1:]
    assert one["system"][0]["text"].startswith("x-anthropic-billing-header") and one["system"][0] != two["system"][0]
    assert "/Users/dev1/code/app1" in json.dumps(two["messages"]) and "dev0" not in json.dumps(two)
    chat = as_chat(one)
    assert chat["messages"][0]["role"] == "system" and chat["messages"][0]["content"].startswith(
        one["system"][0]["text"]) and '"name": "Bash"' in chat["messages"][0]["content"]
    assert [m["role"] for m in chat["messages"][1:]] == [m["role"] for m in one["messages"]]


def test_agents_reports_the_kv_bytes_of_the_sessions_at_each_precision(data_dir):
    """The memory claim of benchmarks/README.md (agents): the sessions' KV
    bytes in 8 and 4 bits against float, measured on the model's caches with
    its weights in float32 (this CPU's) and in bfloat16 (a Mac's)."""
    from impetus.bench.agents import kv_memory
    from impetus.models.store import DEFAULT_MODEL

    kv = kv_memory(data_dir / "models" / DEFAULT_MODEL, 1000, 3)
    # SmolLM2 keeps every token in all 30 layers: 8 bits with groups of 64 hold 8 + 2 x 16 / 64 bits a value.
    assert kv["float32"]["bytes"]["float"] == 3 * 1024 * 46080
    assert kv["float32"]["vs_float"]["8-bit"] == pytest.approx((8 + 2 * 32 / 64) / 32)
    assert kv["bfloat16"]["vs_float"]["8-bit"] == pytest.approx((8 + 2 * 16 / 64) / 16)  # 0.53: the target 0.55
    assert kv["bfloat16"]["vs_float"]["4-bit"] == pytest.approx((4 + 2 * 16 / 64) / 16)  # 0.28: the target 0.35


@pytest.mark.slow
def test_vision_runs_both_servers_on_one_vlm_folder(data_dir, tmp_path):
    from impetus.bench import random_vlm

    folder = random_vlm.idefics3(tmp_path / "tiny-smolvlm")
    summary = bench("--scenario", "vision", "--model", str(folder), "--levels", "2", "--max-tokens", "4",
                    data_dir=data_dir, out=tmp_path / "out")
    written(tmp_path / "out", "vision")
    [row] = summary["rows"]
    for side in ("impetus", "mlx_vlm_server"):
        assert row[side]["errors"] == {} and row[side]["requests"] == 2, row
        assert 0 < row[side]["tokens"] <= 8 and row[side]["ttft_p50_image_s"] > 0
    repeated = summary["repeated_image"]
    assert repeated["impetus"]["again_ttft_s"] > 0 and repeated["impetus_without_prefix_cache"]["again_ttft_s"] > 0
    assert repeated["prefix_cache_speedup"] == pytest.approx(
        repeated["impetus_without_prefix_cache"]["again_ttft_s"] / repeated["impetus"]["again_ttft_s"])


@pytest.mark.slow
def test_autocomplete_types_through_a_file_beside_a_flood(data_dir, tmp_path):
    """A few keystrokes on a random coder: each request is answered or superseded, and
    after the first each reads its prompt up to the cursor from the prefix cache."""
    summary = bench("--scenario", "autocomplete", "--keystrokes", "4", "--flood-streams", "1", "--max-tokens", "2",
                    data_dir=data_dir, out=tmp_path)
    assert summary == {k: v for k, v in written(tmp_path, "autocomplete").items() if k != "samples"}
    [ours] = summary["servers"]
    assert ours["server"] == "impetus" and ours["requests"] == 4
    assert ours["answered"] + ours["superseded"] >= 4 and ours["answered"] >= 1
    assert ours["computed_prompt_tokens_mean"] < ours["prompt_tokens_mean"]


@pytest.mark.slow
def test_documents_ingests_a_corpus_and_searches_a_filled_store(data_dir, tmp_path):
    """One document ingested through the API, then a store of 200 chunks searched: the vectors-only
    search finds brute force's top ten exactly."""
    summary = bench("--scenario", "documents", "--documents", "1", "--levels", "200", "--queries", "2",
                    data_dir=data_dir, out=tmp_path)
    assert summary == {k: v for k, v in written(tmp_path, "documents").items() if k != "samples"}
    ingest, [search] = summary["ingest"], summary["search"]
    assert ingest["status"] == "completed" and ingest["chunks"] >= 1 and ingest["chunks_per_s"] > 0
    assert search["chunks"] == 200 and search["recall_at_10"] == 1.0 and search["search_p50_s"] > 0


@pytest.mark.slow
def test_batch_runs_beside_a_person_and_against_a_client_loop(data_dir, tmp_path):
    summary = bench("--scenario", "batch", "--requests", "8", "--probes", "2", "--probe-interval", "0.5",
                    data_dir=data_dir, out=tmp_path)
    assert summary == {k: v for k, v in written(tmp_path, "batch").items() if k != "samples"}
    assert summary["batch"]["status"] == "completed" and summary["batch"]["completed"] == 8
    assert summary["client_loop"]["errors"] == 0 and summary["throughput_ratio"] > 0
    assert summary["solo_ttft_p50_s"] > 0 and summary["batch"]["probes"] >= 1


def test_team_scores_each_kind_against_its_target_and_counts_goodput():
    """bench.team's arithmetic, on rows whose outcome is known: a chat turn within 2x the same turn
    alone, a keystroke within 3x the typist's alone p50, an agent's turn and a batch line answered."""
    from impetus.bench.team import score

    def row(kind, ok=True, ttft=None, turn=0, tokens=5, error=None):
        return {"kind": kind, "who": 0, "turn": turn, "ok": ok, "ttft_s": ttft, "tokens": tokens, "error": error,
                "start_s": 0.0, "end_s": 1.0}

    alone = {"chat": [0.5, 1.0], "autocomplete": 0.2}
    rows = [row("chat", ttft=0.9), row("chat", ttft=1.1), row("chat", ttft=1.9, turn=1), row("chat", ttft=2.1, turn=5),
            row("autocomplete", ttft=0.6), row("autocomplete", ttft=0.61),
            row("autocomplete", ok=False, error="superseded", tokens=0),
            row("agent", ttft=30.0), row("agent", ok=False, error="ReadTimeout", tokens=0),
            *[row("batch") for _ in range(5)], row("batch", ok=False, error="not answered", tokens=0)]
    scored = score(rows, alone, wall_s=120.0)
    kinds = scored["kinds"]
    assert [kinds[k]["met"] for k in ("chat", "autocomplete", "agent", "batch")] == [2, 1, 1, 5]
    assert kinds["chat"]["requests"] == 4 and kinds["autocomplete"]["errors"] == {"superseded": 1}
    assert kinds["chat"]["ttft_p50_s"] == 1.1 and kinds["batch"]["ttft_p50_s"] is None
    assert kinds["batch"]["tokens_per_s"] == 25 / 120.0
    assert scored["met"] == 9 and scored["goodput_per_min"] == 9 / 2.0
    assert score(rows, {"chat": [], "autocomplete": None}, 60.0)["met"] == 6  # nothing alone: no streamed turn met


def test_an_editors_request_takes_suffix_or_the_fim_prompt_the_client_renders():
    from impetus.bench.autocomplete import request_body
    from impetus.models.fim import FAMILIES

    server = request_body("coder", "a\nb\ndef f(", "):\n    pass\n", 16)
    assert (server["prompt"], server["suffix"]) == ("a\nb\ndef f(", "):\n    pass\n")
    client = request_body("coder", "a\nb\ndef f(", "):\n    pass\n", 16, FAMILIES[0])
    assert "suffix" not in client and client["stop"] == ["<|fim_pad|>", "<|file_sep|>"]
    assert client["prompt"] == "<|fim_prefix|>a\nb\ndef f(<|fim_suffix|>):\n    pass\n<|fim_middle|>"
