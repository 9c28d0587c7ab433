"""`impetus service install|uninstall|status`"""

from __future__ import annotations

import sys

from rich.console import Console

from impetus.stack import services


def run(args, settings) -> None:
    console = Console(stderr=True, soft_wrap=True)
    progress = lambda message: console.print(f"[cyan]•[/] {message}")  # noqa: E731
    try:
        layout = services.layout_for(settings, args.system, args.manager, args.root, args.user)
        if args.service_command == "install":
            host = args.public_host or ("0.0.0.0" if args.join else "127.0.0.1")
            services.install(settings, layout, progress=progress, public_host=host, public_port=args.public_port,
                             join=args.join, advertise=args.advertise)
            console.print(f"[green]✓[/] installed for {layout.manager} "
                          f"({f'system, as {layout.user}' if layout.system else 'this user'}); data in "
                          f"{layout.data_dir}, logs in {layout.log_dir}")
        elif args.service_command == "uninstall":
            services.uninstall(settings, layout, progress=progress)
        else:
            states = services.status(layout)
            if not states:
                console.print("not installed")
            for name, state in states:
                print(f"{name}\t{state}")
    except services.ServiceError as error:
        console.print(f"[red]error:[/] {error}")
        sys.exit(2)
