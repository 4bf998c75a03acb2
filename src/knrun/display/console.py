"""The consoles: results to stdout, problems to stderr, plain text when not a terminal."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


@contextmanager
def results_to_stderr(enabled: bool) -> Iterator[None]:
    """`--json`: while the command runs, what it would print on stdout (the panel, log lines,
    tables) goes to stderr, so stdout holds the one JSON object `json_result` writes."""
    if not enabled:
        yield
        return
    out.file = sys.stderr
    try:
        yield
    finally:
        out.file = None  # type: ignore[assignment]  # back to whatever sys.stdout is then


def json_result(value: dict[str, Any]) -> None:
    """The command's result for a script: one JSON object on stdout, whatever `out` is now."""
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()
