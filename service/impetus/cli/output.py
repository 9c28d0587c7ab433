"""Console output shared by the commands."""

from __future__ import annotations

import sys

from rich.console import Console


def table_console() -> Console:
    """Tables on stdout: as wide as the terminal, or wide enough not to cut
    names when piped (rich would otherwise assume 80 columns)."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
