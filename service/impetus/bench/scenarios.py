"""Runs one of the load, peer, soak, fairness, shared-prefix, agents, kv-quality, cluster, speculative, vision,
autocomplete, documents, batch and team benchmarks and writes what it measured:
a JSON file and PNG plots named by date, scenario and machine, so results from
different machines sit side by side under benchmarks/results/."""

from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

from rich.console import Console

REPO_RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def machine_tag() -> str:
    import mlx.core as mx

    device = "gpu" if mx.default_device() == mx.gpu else "cpu"
    return f"{platform.system().lower()}-{device}-{os.cpu_count()}core"


def _levels(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _servers(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def run_scenario(args, settings) -> dict:
    from impetus.bench import (
        agents,
        autocomplete,
        batch,
        cluster,
        documents,
        fairness,
        kv_quality,
        load,
        peer,
        shared_prefix,
        soak,
        speculative,
        team,
        vision,
    )

    console = Console(stderr=True, soft_wrap=True)
    progress = console.print
    work = Path(tempfile.mkdtemp(prefix=f"impetus-bench-{args.scenario}-"))
    progress(f"[bold]{args.scenario}[/] benchmark (logs and scratch files: {work})")
    if args.scenario == "load":
        result, module = load.run(settings, _levels(args.levels or "1,4,16,64,256"), args.duration or 20,
                                  args.max_tokens or 32, work, progress, workers=settings.workers), load
    elif args.scenario == "peer":
        result, module = peer.run(settings, _levels(args.levels or "1,4,16,64"), args.max_tokens or 64,
                                  args.requests_per_client, work, progress,
                                  pairings=tuple(p.strip() for p in args.pairings.split(",")),
                                  folder_levels=_levels(args.folder_levels)), peer
    elif args.scenario == "fairness":
        result, module = fairness.run(settings, args.flood, args.max_tokens or 64, args.probes, args.probe_interval,
                                      work, progress), fairness
    elif args.scenario == "shared-prefix":
        result, module = shared_prefix.run(settings, _levels(args.levels or "8,16"), args.prompt_tokens,
                                           args.max_tokens or 16, work, progress,
                                           servers=_servers(args.servers or "impetus,impetus-fifo,mlx_lm.server")
                                           ), shared_prefix
    elif args.scenario == "agents":
        result, module = agents.run(settings, args.sessions or 8, args.max_tokens or 16, args.gap or 3.0, work,
                                    progress,
                                    servers=_servers(args.servers or ",".join(agents.SERVERS))), agents
    elif args.scenario == "kv-speed":
        result, module = kv_quality.run_speed(settings, args.max_tokens or 48, progress), kv_quality
    elif args.scenario == "kv-quality":
        result, module = kv_quality.run(settings, work, progress), kv_quality
    elif args.scenario == "cluster":
        result, module = cluster.run(settings, _levels(args.levels or "4,16"), args.duration or 20,
                                     args.max_tokens or 32, work, progress, hop_rounds=args.hop_rounds), cluster
    elif args.scenario == "speculative":
        result, module = speculative.run(settings, args.max_tokens or 128, work, progress), speculative
    elif args.scenario == "vision":
        folder = Path(args.model) if args.model and Path(args.model).is_dir() else None
        result, module = vision.run(settings, _levels(args.levels or "8,16"), args.max_tokens or 64, work, progress,
                                    folder), vision
    elif args.scenario == "autocomplete":
        result, module = autocomplete.run(settings, args.model, args.keystrokes, args.max_tokens or 16,
                                          args.flood_streams, args.llama_cpp_python, work,
                                          progress), autocomplete
    elif args.scenario == "batch":
        result, module = batch.run(settings, args.requests or 1000, args.concurrency or 16, args.max_tokens or 8, args.probes,
                                   args.probe_interval, work, progress), batch
    elif args.scenario == "documents":
        result, module = documents.run(settings, args.documents, _levels(args.levels or "10000,100000"),
                                       args.queries, work, progress), documents
    elif args.scenario == "team":
        mix = team.Mix(sessions=4 if args.sessions is None else args.sessions, gap_s=args.gap or 2.0, chat_users=args.chat_users,
                       duration_s=args.duration or 240.0, editors=args.editors, keystrokes=args.keystrokes,
                       requests=args.requests or 500, chat_tokens=args.max_tokens or 48,
                       loop_concurrency=args.concurrency or 16)
        result, module = team.run(settings, mix, work, progress,
                                  servers=_servers(args.servers or "impetus,mlx_lm.server")), team
    elif args.scenario == "soak":
        result, module = soak.run(settings, args.duration or 600, args.concurrency or 8, args.max_tokens or 32, work,
                                  progress), soak
    else:
        raise ValueError(f"unknown scenario {args.scenario!r}")

    result.update(date=datetime.date.today().isoformat(), machine=machine_tag(), platform=platform.platform())
    out_dir = args.out or (REPO_RESULTS if REPO_RESULTS.is_dir() else Path.cwd())
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    stem = out_dir / f"{result['date']}-{args.scenario}{tag}-{result['machine']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    written = [stem.with_suffix(".json"), *module.plot(result, stem)]
    for path in written:
        progress(f"wrote {path}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    return result
