"""`impetus keys create|update|list|export|import|revoke` against the stack's Redis;
each change is also an entry in the audit trail (who: `cli:USER`)."""

from __future__ import annotations

import json
import sys
import time

from redis.exceptions import RedisError
from rich.console import Console
from rich.table import Table

from impetus.cli.output import table_console
from impetus.gateway import connect
from impetus.gateway.audit import AuditEntry, AuditLog, cli_who, key_settings
from impetus.gateway.keys import KeyExists, KeyNotFound, KeyStore


def _when(timestamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(timestamp))) if timestamp else "-"


def _models(record) -> str:
    return ",".join(record.models) or "all"


def _budget(record) -> str:
    return f"{record.budget_tokens}/{record.budget_period}" if record.budget_tokens else "none"


def run(args, settings) -> None:
    console = Console(stderr=True, soft_wrap=True)
    url = settings.effective_redis_url
    redis = connect(url)
    store = KeyStore(redis)
    audit = AuditLog(redis)
    who = cli_who()
    try:
        if args.keys_command == "create":
            key, record = store.create(args.name, admin=args.admin, rpm=args.rpm, tpm=args.tpm,
                                       expires_days=args.expires, share=args.share or 1.0,
                                       priority=args.priority or "interactive", models=args.models or (),
                                       budget_tokens=args.budget_tokens,
                                       budget_period=args.budget_period or "month",
                                       autocomplete_priority=args.autocomplete_priority or None)
            audit.record(who, AuditEntry("key.created", record.name, key_settings(record)), "local")
            console.print(f"created key [bold]{record.name}[/] ({', '.join(record.scopes)}); "
                          "it is shown once, now: store it safely")
            print(key)  # the last line of stdout, for scripts
        elif args.keys_command == "update":
            record = store.update(args.name, rpm=args.rpm, tpm=args.tpm, share=args.share, priority=args.priority,
                                  models=args.models, budget_tokens=args.budget_tokens,
                                  budget_period=args.budget_period, autocomplete_priority=args.autocomplete_priority)
            audit.record(who, AuditEntry("key.updated", record.name, key_settings(record)), "local")
            console.print(f"updated key [bold]{record.name}[/]: rpm {record.rpm or 'default'}, tpm "
                          f"{record.tpm or 'default'}, share {record.share:g}, priority {record.priority_name}, "
                          f"models {_models(record)}, budget {_budget(record)}")
        elif args.keys_command == "list":
            table = Table("name", "prefix", "scopes", "rpm", "tpm", "share", "priority", "models", "budget",
                          "created", "expires", "last used", "requests", "tokens in/out")
            for record, usage in store.list():
                table.add_row(
                    record.name, record.prefix + "…", ",".join(record.scopes),
                    str(record.rpm or f"default ({settings.default_rpm})"),
                    str(record.tpm or f"default ({settings.default_tpm})"),
                    f"{record.share:g}", record.priority_name, _models(record), _budget(record),
                    _when(record.created), _when(record.expires), _when(usage.get("last_used")),
                    usage.get("requests", "0"),
                    f"{usage.get('prompt_tokens', '0')}/{usage.get('completion_tokens', '0')}",
                )
            table_console().print(table)
        elif args.keys_command == "export":
            exported = store.export()
            text = json.dumps({"impetus_keys": 1, "keys": exported}, indent=2) + "\n"
            if args.output:
                args.output.write_text(text)
                args.output.chmod(0o600)
                console.print(f"exported {len(exported)} keys to {args.output}")
            else:
                sys.stdout.write(text)
        elif args.keys_command == "import":
            try:
                records = json.loads(args.file.read_text())["keys"]
                restored, skipped = store.import_(records, replace=args.replace)
            except (OSError, ValueError, KeyError, TypeError) as error:
                console.print(f"[red]error:[/] {args.file} is not an export of `impetus keys export`: {error}")
                sys.exit(2)
            audit.record(who, AuditEntry("keys.imported", str(args.file), {"restored": restored,
                                                                            "skipped": skipped}), "local")
            console.print(f"restored {restored} keys" + (f", kept {skipped} that exist (--replace)" if skipped else ""))
        elif args.keys_command == "revoke":
            record = store.revoke(args.name)
            audit.record(who, AuditEntry("key.revoked", record.name), "local")
            console.print(f"revoked key [bold]{record.name}[/] ({record.prefix}…)")
    except (KeyExists, KeyNotFound, ValueError) as error:
        console.print(f"[red]error:[/] {error}")
        sys.exit(2)
    except RedisError as error:
        console.print(f"[red]error:[/] cannot reach Redis at {url} ({error}). Is the stack running "
                      "(`impetus up`), or is IMPETUS_REDIS_URL set to the right server?")
        sys.exit(2)
