"""`impetus` command line: serve, models, doctor, bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _settings(args):
    """Settings from the environment/TOML, with the command line's flags on top."""
    from impetus.settings import Settings

    overrides = {}
    for field in ("data_dir", "model", "host", "port", "workers", "advertise"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _add_kv_options(parser) -> None:
    parser.add_argument("--kv-bits", type=int, choices=(4, 8),
                        help="serve its running requests' KV caches in this many bits (over IMPETUS_KV_BITS)")
    parser.add_argument("--kv-group-size", type=int, choices=(32, 64, 128), help="with --kv-bits (default 64)")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="where models live (default: the platform's data dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="impetus", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the OpenAI-compatible server (Gunicorn + gevent)")
    _add_common(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8081)")
    serve.add_argument("--workers", type=int, help="worker processes, each with its own model copy")
    serve.add_argument("--model", help="model name or MLX folder path")
    serve.add_argument("--join", metavar="REDIS_URL",
                       help="be one more host of a cluster: the gateway's Redis, as `impetus up --cluster` "
                            "prints it (redis://:PASSWORD@GATEWAY:6390); listens on 0.0.0.0 unless --host")
    serve.add_argument("--join-file", metavar="PATH", help="--join's URL read from a file (what services use: "
                                                           "the password stays out of the unit file)")
    serve.add_argument("--advertise", metavar="URL",
                       help="this host's address as the gateway reaches it (default http://HOSTNAME:PORT)")

    up = commands.add_parser("up", help="the whole stack in the foreground: redis, workers, nginx")
    _add_common(up)
    up.add_argument("--host", dest="public_host", default="127.0.0.1",
                    help="address nginx listens on (0.0.0.0 for the LAN; default 127.0.0.1)")
    up.add_argument("--port", dest="public_port", type=int, default=8080, help="nginx's port (default 8080)")
    up.add_argument("--workers", type=int, help="worker processes, each with its own model copy")
    up.add_argument("--model", help="model name or MLX folder path")
    up.add_argument("--tls", action="store_true",
                    help="serve HTTPS with the data dir's certificate (made by `impetus tls` if missing)")
    up.add_argument("--cluster", action="store_true",
                    help="be the gateway of several Macs: Redis also listens on the LAN with a password, and "
                         "nginx routes to every host that joins (prints the join command)")
    up.add_argument("--cluster-address", help="with --cluster: the address Redis listens on and the join "
                                              "command names (default: this Mac's LAN address)")
    up.add_argument("--redis-port", type=int, default=6390, help="with --cluster: Redis' LAN port (default 6390)")

    service = commands.add_parser("service", help="run the stack as launchd services (macOS) or systemd units")
    service_commands = service.add_subparsers(dest="service_command", required=True)
    for verb, text in (("install", "install (or update) and start the services"),
                       ("uninstall", "stop the services and remove everything installed"),
                       ("status", "whether each service runs")):
        command = service_commands.add_parser(verb, help=text)
        _add_common(command)
        command.add_argument("--system", action="store_true",
                             help="for the whole machine (LaunchDaemon / system unit; needs root), not this user")
        command.add_argument("--manager", choices=("launchd", "systemd"), help="default: this platform's")
        command.add_argument("--root", type=Path, help="write below this folder and start nothing (packaging)")
        command.add_argument("--user", help="with --system: the unprivileged account to run as (default: _impetus "
                                            "on macOS, impetus on Linux, made if missing; never root)")
        if verb == "install":
            command.add_argument("--host", dest="public_host",
                                 help="nginx's address (default 127.0.0.1); with --join the workers' (0.0.0.0)")
            command.add_argument("--port", dest="public_port", type=int, default=8080, help="nginx's port")
            command.add_argument("--workers", type=int, help="worker processes")
            command.add_argument("--model", help="the model loaded at start")
            command.add_argument("--join", metavar="REDIS_URL",
                                 help="one more host of a cluster: only the workers, on the gateway's Redis "
                                      "(as `impetus up --cluster` prints it)")
            command.add_argument("--advertise", metavar="URL", help="with --join: this Mac's address for the gateway")

    cluster = commands.add_parser("cluster", help="several Macs: the gateway's secret and join command")
    cluster_commands = cluster.add_subparsers(dest="cluster_command", required=True)
    rotate = cluster_commands.add_parser(
        "rotate-secret", help="a new secret between the gateway's nginx and the workers (nginx reloads by itself)")
    _add_common(rotate)
    join_command = cluster_commands.add_parser("join-command", help="print the command that joins another Mac")
    _add_common(join_command)
    join_command.add_argument("--cluster-address", help="the gateway's LAN address (default: this Mac's)")
    join_command.add_argument("--redis-port", type=int, default=6390)

    tls = commands.add_parser("tls", help="make a self-signed certificate for serving the LAN over HTTPS")
    _add_common(tls)
    tls.add_argument("--name", action="append", dest="names",
                     help="a host name or IP clients use (repeatable; default: this host's names and addresses)")

    models = commands.add_parser("models", help="list, import, pull, alias, load and unload models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    listing = model_commands.add_parser("list", help="models in the data dir")
    _add_common(listing)
    for verb, text in (("import", "import a model from a GGUF path, ollama:NAME[:TAG], lmstudio:PUBLISHER/REPO "
                                  "or hf:OWNER/NAME"),
                       ("import-gguf", "convert a GGUF file into an MLX model folder (as `import PATH`)")):
        importing = model_commands.add_parser(verb, help=text)
        _add_common(importing)
        importing.add_argument("source", metavar="SOURCE" if verb == "import" else "PATH")
        importing.add_argument("--name", help="model name (default: from the source)")
        importing.add_argument("--force", action="store_true", help="replace an existing model of that name")
        importing.add_argument("--bits", type=int, choices=(2, 3, 4, 5, 6, 8),
                               help="store MLX affine-quantized weights of this many bits (default: 8 for Q8_0 "
                                    "and Q6_K files, the float type for F16/F32 files, 4 otherwise)")
        importing.add_argument("--group-size", type=int, choices=(32, 64, 128), default=32,
                               help="weights per scale and bias (default 32, ggml's block)")
        importing.add_argument("--dtype", choices=("float32", "float16", "bfloat16"),
                               help="store unquantized weights of this type instead")
        _add_kv_options(importing)
    discover = model_commands.add_parser("discover", help="models already on this Mac: Ollama, LM Studio, "
                                                          "the Hugging Face cache")
    _add_common(discover)
    discover.add_argument("--json", action="store_true", help="print JSON")
    ensure = model_commands.add_parser("ensure", help="make sure a model is available locally")
    _add_common(ensure)
    ensure.add_argument("model", nargs="?", help="model name or path (default: the configured model)")
    pulling = model_commands.add_parser("pull", help="download an MLX model folder from the Hugging Face hub")
    _add_common(pulling)
    pulling.add_argument("repo_id", help="owner/name, e.g. mlx-community/Qwen2.5-0.5B-Instruct-4bit")
    pulling.add_argument("--name", help="model name (default: the repository's name)")
    pulling.add_argument("--revision", help="branch, tag or commit")
    pulling.add_argument("--force", action="store_true", help="replace an existing model of that name")
    alias = model_commands.add_parser("alias", help="another name for a model, optionally with other weights")
    _add_common(alias)
    alias.add_argument("name")
    alias.add_argument("target", nargs="?", help="a model name or folder path")
    alias.add_argument("--weights", choices=("auto", "stored", "float32", "float16", "bfloat16"),
                       help="serve the target's weights this way (stored: as quantized on disk)")
    alias.add_argument("--remove", action="store_true", help="remove the alias NAME")
    _add_kv_options(alias)
    alias.add_argument("--chat-template", metavar="FILE",
                       help="a Jinja chat template for NAME (a model without one, or to replace its own)")
    sampling = alias.add_argument_group("default sampling (a request's own values win)")
    sampling.add_argument("--temperature", type=float)
    sampling.add_argument("--top-p", type=float)
    sampling.add_argument("--top-k", type=int)
    sampling.add_argument("--min-p", type=float)
    sampling.add_argument("--repetition-penalty", type=float)
    sampling.add_argument("--stop", action="append", metavar="TEXT", help="a stop sequence (up to 4)")
    for verb, text in (("load", "load a model in a running server"), ("unload", "unload a model from a running server"),
                       ("loaded", "what a running server has loaded")):
        command = model_commands.add_parser(verb, help=text)
        _add_common(command)
        if verb != "loaded":
            command.add_argument("model")
        if verb == "load":
            command.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                                 help="never unload it to make room or for idleness")
            command.add_argument("--keep-alive", type=float, metavar="SECONDS",
                                 help="unload after this long idle (0: only when memory is needed)")
        command.add_argument("--url", help="the server (default: http://127.0.0.1:<IMPETUS_PORT>)")
        command.add_argument("--key", help="an admin key, when keys are required (or IMPETUS_ADMIN_KEY)")

    keys = commands.add_parser("keys", help="personal API keys (stored hashed in Redis)")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="make a key; it is printed once, as the last line")
    _add_common(create)
    create.add_argument("--name", required=True, help="who or what the key is for (unique)")
    create.add_argument("--admin", action="store_true", help="may use admin endpoints")
    create.add_argument("--rpm", type=int, help="requests per minute (default: the server's)")
    create.add_argument("--tpm", type=int, help="tokens per minute (default: the server's)")
    create.add_argument("--expires", type=float, metavar="DAYS", help="expire after DAYS days")
    update = key_commands.add_parser("update", help="change a key's limits, share, priority, models or budget")
    _add_common(update)
    update.add_argument("name", metavar="KEY_OR_NAME")
    update.add_argument("--rpm", type=int, help="requests per minute (0: the server's default)")
    update.add_argument("--tpm", type=int, help="tokens per minute (0: the server's default)")
    for command in (create, update):
        command.add_argument("--share", type=float, help="its weight when keys share the batch (default 1)")
        command.add_argument("--priority", choices=("interactive", "batch"),
                             help="batch: uses idle capacity and yields to interactive work")
        command.add_argument("--autocomplete-priority", choices=("interactive", "batch", ""),
                             help="its fill-in-the-middle requests' priority (update: '' for the key's own)")
        command.add_argument("--models", metavar="A,B", type=_names,
                             help="the only models it may use, names or aliases (default all; update: '' for all)")
        command.add_argument("--budget-tokens", type=int, metavar="N",
                             help="prompt + completion tokens per budget period (update: 0 for none)")
        command.add_argument("--budget-period", choices=("day", "week", "month"),
                             help="the budget's period, in the server's time zone (default month)")
    _add_common(key_commands.add_parser("list", help="keys with their limits and usage"))
    export = key_commands.add_parser("export", help="back up every key (hashes, limits, usage) as JSON")
    _add_common(export)
    export.add_argument("--output", "-o", type=Path, help="a file (default: standard output)")
    importing_keys = key_commands.add_parser("import", help="restore keys from `impetus keys export`")
    _add_common(importing_keys)
    importing_keys.add_argument("file", type=Path)
    importing_keys.add_argument("--replace", action="store_true", help="replace keys whose name exists")
    report = commands.add_parser("usage", help="usage per key, model and day (requests and tokens)")
    _add_common(report)
    report.add_argument("--key", help="one key's name")
    report.add_argument("--since", metavar="DATE", help="first day, YYYY-MM-DD (default: 30 days ago)")
    report.add_argument("--until", metavar="DATE", help="last day, YYYY-MM-DD (default: today)")
    report.add_argument("--csv", action="store_true", help="CSV on stdout, for a spreadsheet")
    report.add_argument("--json", action="store_true")
    trail = commands.add_parser("audit", help="admin actions: who changed what, when, from where")
    _add_common(trail)
    trail.add_argument("--limit", type=int, default=50, help="the newest N entries (default 50)")
    trail.add_argument("--action", help="only actions starting with this, e.g. key. or model.loaded")
    trail.add_argument("--who", help="only this key name (or cli:USER)")
    trail.add_argument("--json", action="store_true")
    listing_hosts = commands.add_parser("hosts", help="the hosts serving this Redis: models, load, heartbeat")
    _add_common(listing_hosts)
    listing_hosts.add_argument("--json", action="store_true")
    revoke = key_commands.add_parser("revoke", help="revoke a key at once")
    _add_common(revoke)
    revoke.add_argument("name")

    doctor = commands.add_parser("doctor", help="check this machine and say what is missing")
    _add_common(doctor)

    bench = commands.add_parser(
        "bench", help="benchmarks: core (raw mlx-lm vs the server), load (a ramp through nginx with keys), "
                      "peer (side by side with mlx_lm.server), soak (memory and open files over time), "
                      "fairness (one key floods, another asks), shared-prefix (N agents, one system prompt), "
                      "agents (N Claude Code sessions of different people, three turns, a restart, one more), "
                      "kv-quality (8- and 4-bit KV caches against float: KL and top-token agreement), "
                      "kv-speed (decode tokens/s with float, 8- and 4-bit KV caches), "
                      "cluster (a gateway and one, then two hosts: the hop and the split), "
                      "speculative (prompt lookup off and on, and mlx_lm.server: editing and open-ended), "
                      "vision (half image, half text requests, and mlx-vlm's server; a repeated image), "
                      "autocomplete (a typist's fill-in-the-middle requests beside a flood, and llama.cpp), "
                      "documents (ingesting a corpus; searching stores of 10k and 100k chunks, recall), "
                      "batch (a batch in idle capacity beside a person, against a client loop), "
                      "team (agents, chat users, editors and a batch at once, against mlx_lm.server: goodput)")
    _add_common(bench)
    bench.add_argument("--scenario", choices=("core", "load", "peer", "soak", "fairness", "shared-prefix", "agents",
                                                  "kv-quality", "kv-speed", "cluster", "speculative", "vision",
                                                  "autocomplete", "documents", "batch", "team"),
                       default="core")
    bench.add_argument("--model", help="model name or MLX folder path")
    bench.add_argument("--json", action="store_true", help="print one JSON line on stdout")
    bench.add_argument("--max-tokens", type=int,
                       help="tokens per request (default: 128 core, 32 load/soak, 64 peer)")
    bench.add_argument("--levels", help="concurrency levels (default: core 1,4,16; load 1,4,16,64,256; "
                                        "peer 1,4,16,64)")
    bench.add_argument("--port", type=int, help="core: port for the server under test (default: a free one)")
    bench.add_argument("--duration", type=float,
                       help="seconds per level (load and cluster, default 20) or in all (soak, default 600; "
                            "team: the chat users', default 240)")
    bench.add_argument("--concurrency", type=int,
                       help="soak: concurrent clients (default 8); batch: the client loop's (default 16)")
    bench.add_argument("--requests-per-client", type=int, default=2, help="peer: requests each client sends")
    bench.add_argument("--folder-levels", default="1,16",
                       help="peer: levels for the 'same folder' pairing (the peer's 4-bit CPU path is slow)")
    bench.add_argument("--pairings", default="same weights,same folder",
                       help="peer: which pairings to run (comma-separated)")
    bench.add_argument("--flood", type=int, default=40, help="fairness: key A's requests, all at once")
    bench.add_argument("--probes", type=int, default=8, help="fairness: key B's requests alone, the reference")
    bench.add_argument("--probe-interval", type=float, default=3.0,
                       help="fairness: seconds between key B's requests under the flood")
    bench.add_argument("--hop-rounds", type=int, default=40,
                       help="cluster: rounds of the hop's four requests (straight and through the gateway)")
    bench.add_argument("--prompt-tokens", type=int, default=3500, help="shared-prefix: the system prompt's size")
    bench.add_argument("--servers", help="shared-prefix (default impetus,impetus-fifo,mlx_lm.server) and agents "
                                         "(default impetus,impetus-as-sent,impetus-billing-header,impetus-no-disk,mlx_lm.server): "
                                         "which servers to measure (comma-separated)")
    bench.add_argument("--keystrokes", type=int, default=40, help="autocomplete: the typist's pauses")
    bench.add_argument("--flood-streams", type=int, default=2, help="autocomplete: another key's long answers")
    bench.add_argument("--llama-cpp-python", metavar="PYTHON",
                       help="autocomplete: a Python with llama-cpp-python installed, for the llama.cpp baseline")
    bench.add_argument("--documents", type=int, default=40, help="documents: Python's topics to ingest")
    bench.add_argument("--queries", type=int, default=50, help="documents: searches at each store size")
    bench.add_argument("--requests", type=int,
                       help="batch: requests in the batch and the client loop (default 1000; team 500)")
    bench.add_argument("--sessions", type=int,
                       help="agents: coding-agent sessions, one per person (default 8; team 4)")
    bench.add_argument("--gap", type=float, help="agents: seconds between two sessions' starts (default 3; team 2)")
    bench.add_argument("--chat-users", type=int, default=6, help="team: people in chat conversations")
    bench.add_argument("--editors", type=int, default=2, help="team: people typing with autocomplete")
    bench.add_argument("--tag", help="load/peer/soak/fairness/shared-prefix: added to the result's file name")
    bench.add_argument("--out", type=Path,
                       help="load/peer/soak: folder for the JSON result and PNG plots (default benchmarks/results)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # Before anything imports mlx: bind MLX's CPU backend to OpenBLAS.
    from impetus.system.blas import preload_openblas

    preload_openblas()
    if args.command == "serve" and (args.join or args.join_file):
        from impetus.cli.serve import join, read_join_file

        url = args.join or read_join_file(args.join_file)
        sys.exit(join(_settings(args).model_copy(update={"redis_url": url, "host": args.host or "0.0.0.0"})))
    elif args.command == "serve":
        from impetus.cli.serve import run

        run(_settings(args))
    elif args.command == "up":
        from impetus.stack.up import ClusterOptions
        from impetus.stack.up import main as up

        options = None
        if args.cluster:
            from impetus.stack.cluster import lan_address

            options = ClusterOptions(args.cluster_address or lan_address(), args.redis_port)
        up(_settings(args), args.public_host, args.public_port, args.tls, options)
    elif args.command == "cluster":
        from impetus.cli import cluster

        cluster.run(args, _settings(args))
    elif args.command == "tls":
        from impetus.stack.tls import make_certificate

        cert, _ = make_certificate(_settings(args).data_dir, args.names)
        print(cert)
    elif args.command == "service":
        from impetus.cli import service

        service.run(args, _settings(args))
    elif args.command == "models":
        from impetus.cli import models

        models.run(args, _settings(args))
    elif args.command == "keys":
        from impetus.cli import keys

        keys.run(args, _settings(args))
    elif args.command in ("usage", "audit", "hosts"):
        from impetus.cli import reports

        getattr(reports, args.command)(args, _settings(args))
    elif args.command == "doctor":
        from impetus.cli.doctor import run

        sys.exit(run(_settings(args)))
    elif args.command == "bench":
        if args.scenario == "core":
            from impetus.bench.runner import run

            args.max_tokens = args.max_tokens or 128
            args.levels = args.levels or "1,4,16"
            run(args, _settings(args))
        else:
            from impetus.bench.scenarios import run_scenario

            run_scenario(args, _settings(args))


if __name__ == "__main__":
    main()
