"""The Typer app, its command groups, the options commands share, and the one place expected
failures become a line on stderr and an exit code."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from knrun import __version__
from knrun.cli.usage import OneLineErrors
from knrun.display import console
from knrun.errors import ConfigError, ExitCode, KnrunError
from knrun.pricing import usd_to_ticks
from knrun.run.config import AUTO, MAX_CONCURRENCY

P = ParamSpec("P")
T = TypeVar("T")

app = typer.Typer(
    name="knrun",
    cls=OneLineErrors,
    help="Batch runner for large LLM generation jobs: prove a run is safe, then run it fast.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
db_app = typer.Typer(help="The unit store: add knrun's columns, load units.", no_args_is_help=True)
pricing_app = typer.Typer(
    help="pricing.toml against the provider's live prices.", no_args_is_help=True
)
spool_app = typer.Typer(
    help="Paid results waiting in the local spool: see, write, requeue or set aside.",
    invoke_without_command=True,
)
sim_app = typer.Typer(
    help="The simulators of xAI, its Management API and D1.", no_args_is_help=True
)
batch_app = typer.Typer(
    help="Batches `go --batch` made at xAI: list, collect, cancel.", no_args_is_help=True
)
GROUPS = (
    (db_app, "db"),
    (pricing_app, "pricing"),
    (spool_app, "spool"),
    (batch_app, "batch"),
    (sim_app, "sim"),
)
for group, name in GROUPS:
    app.add_typer(group, name=name)

JobOption = Annotated[
    Path | None,
    typer.Option(
        "--job",
        help="Job file. Default: KNRUN_JOB, else the only file in prompts/.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="End with the result as one JSON object on stdout (all else goes to stderr).",
    ),
]
PricingOption = Annotated[
    Path | None,
    typer.Option("--pricing", help="Pricing file. Default: pricing.toml.", show_default=False),
]


def guarded(command: Callable[P, T]) -> Callable[P, T]:
    """Expected failures become one line on stderr and their exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return command(*args, **kwargs)
        except KnrunError as exc:
            console.error(str(exc))
            raise typer.Exit(int(exc.exit_code)) from None
        except KeyboardInterrupt:
            console.error("interrupted")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None

    return wrapper


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Typer has no async commands: each command runs its coroutine here."""
    return asyncio.run(coroutine)


ConcurrencyOption = Annotated[
    str,
    typer.Option(
        "--concurrency",
        metavar="auto|N",
        help="Units in flight: 'auto' finds the account's rate limit and runs at it (up to "
        "--max-concurrency); a number holds that many.",
    ),
]
MaxConcurrencyOption = Annotated[
    int,
    typer.Option(
        "--max-concurrency",
        min=1,
        max=MAX_CONCURRENCY,
        help="Units in flight at most: bounds money in flight and connections.",
    ),
]


def parse_concurrency(value: str) -> int | None:
    """`--concurrency`: None for auto, else a count of units in flight."""
    text = value.strip().lower()
    if text == AUTO:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_CONCURRENCY:
        raise ConfigError(
            f"--concurrency must be 'auto' or a whole number from 1 to {MAX_CONCURRENCY:,}, "
            f"not {value!r}"
        )
    return int(text)


def parse_usd(value: str | None, option: str) -> int | None:
    """A dollar amount from the command line, as ticks."""
    if value is None:
        return None
    try:
        amount = Decimal(value.strip().lstrip("$"))
    except InvalidOperation:
        raise ConfigError(f"{option}: {value!r} is not an amount in USD") from None
    if not amount.is_finite() or amount <= 0:
        raise ConfigError(f"{option}: must be a positive amount in USD")
    return usd_to_ticks(amount)


def today() -> date:
    return datetime.now(UTC).date()


def _version(value: bool) -> None:
    if value:
        console.note(f"knrun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """knrun: preflight, go, retry, status."""
