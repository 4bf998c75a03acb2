"""The consoles: results to stdout, problems to stderr, plain text when not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console

# Piped output (cron logs, files) is read later in an editor: don't squeeze it into 80 columns.
_WIDTH = None if sys.stdout.isatty() else 120

out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)


def error(message: str) -> None:
    """One line on stderr. `markup=False`: messages quote operator text, never rich markup."""
    err.print(f"error: {message}", markup=False, style="bold red")


def warn(message: str) -> None:
    err.print(f"warning: {message}", markup=False, style="yellow")


def note(message: str) -> None:
    out.print(message, markup=False)


def is_terminal() -> bool:
    return out.is_terminal
