"""Usage errors (an unknown option, a value out of range) as one `error:` line and exit 2, like
every other expected failure, instead of the parser's usage box."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer

# Typer vendors Click: its exception classes live here (there is no public alias for them).
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from knrun.display import console
from knrun.errors import ExitCode


class OneLineErrors(TyperGroup):
    """The root command: parses and runs as Typer does, but prints its own usage errors."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        run = super().main
        if not standalone_mode:  # an in-process caller (the demo) handles errors itself
            return run(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = run(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()  # `knrun` or `knrun db` alone: the help, as asked for
            sys.exit(exc.exit_code)
        except ClickException as exc:
            console.error(one_line(exc))
            sys.exit(ExitCode.USAGE if isinstance(exc, UsageError) else exc.exit_code)
        except typer.Abort:
            console.error("aborted")
            sys.exit(ExitCode.FAILURE)
        sys.exit(code if isinstance(code, int) else 0)


def one_line(exc: ClickException) -> str:
    """The parser's message on one line, with the command it was for and where help is."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    return f"{ctx.command_path}: {message} (see `{ctx.command_path} --help`)"
