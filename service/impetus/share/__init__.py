"""The files Impetus writes configurations from, shipped inside the package.

nginx's templates (`nginx/`), the service templates (`services/`: launchd,
systemd, newsyslog, logrotate) and the built dashboard (`dashboard/`, made by
`make dashboard`, not in git) live here, beside the code, so that a wheel
installed with pip, pipx or Homebrew carries them: nothing is looked up in a
git checkout. docker-compose.yml mounts the nginx templates from here too.

This module only says where they are; what is rendered from them is decided
by impetus.stack.
"""

from __future__ import annotations

from pathlib import Path

SHARE = Path(__file__).resolve().parent
NGINX = SHARE / "nginx"
SERVICES = SHARE / "services"
DASHBOARD = SHARE / "dashboard"
