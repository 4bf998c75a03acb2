"""The interface: `knrun`'s commands, each arguments in, one core call, an exit code out."""

from __future__ import annotations

# Importing a command module registers its commands; the order here is `knrun --help`'s.
from knrun.cli import (  # noqa: F401
    batch,
    db,
    demo,
    init,
    preflight,
    pricing,
    run,
    spool,
    status,
    view,
)
from knrun.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
