"""The `knrun` command line: arguments in, one core call, exit code out. No logic lives here."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from knrun import __version__, spool_ops
from knrun import demo as demo_run
from knrun.commands import (
    RunCommand,
    RunStopped,
    approved_left,
    exhausted_units,
    outcome_message,
    parse_usd,
    retry_unit_cost,
    run_canary,
    run_command,
)
from knrun.config import Settings, load_settings
from knrun.context import (
    STATE_DIR,
    fetch_live_models,
    load_context,
    load_pricing_for,
    optional_job,
)
from knrun.display import checklist, console, tables
from knrun.errors import ConfigError, ExitCode, KnrunError
from knrun.files import write_atomically
from knrun.guards import BALANCE_SLACK_TICKS
from knrun.importer import import_units
from knrun.job import JobSpec
from knrun.launch import Launched
from knrun.preflight import CanaryFigures, Options, Preflight
from knrun.pricecheck import MAX_AGE_DAYS, check_prices, sync_prices
from knrun.pricing import PricingTable
from knrun.receipt import describe as receipt_describe
from knrun.receipt import load_valid_receipt
from knrun.runner import RunConfig
from knrun.sim.combined import Simulators
from knrun.sim.d1 import D1Simulator
from knrun.sim.scenario import load_scenario
from knrun.sim.server import serve_forever
from knrun.sim.xai import XaiSimulator
from knrun.status import status_report
from knrun.store.sql import TRANSIENT_REASONS
from knrun.xai import LiveModel

P = ParamSpec("P")
STATUS_FRESH_S = 30.0  # `knrun status` reuses the store's last count for this long
T = TypeVar("T")

app = typer.Typer(
    name="knrun",
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
app.add_typer(db_app, name="db")
app.add_typer(pricing_app, name="pricing")
app.add_typer(spool_app, name="spool")

JobOption = Annotated[
    Path | None,
    typer.Option(
        "--job",
        help="Job file. Default: KNRUN_JOB, else the only file in prompts/.",
        show_default=False,
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


# -- db -------------------------------------------------------------------------------------------


@db_app.command("migrate")
@guarded
def db_migrate(job: JobOption = None) -> None:
    """Add knrun's bookkeeping and output columns and its runs table (idempotent)."""
    ctx = load_context(job)

    async def migrate() -> list[str]:
        store = ctx.open_store()
        try:
            return await store.migrate()
        finally:
            await store.close()

    added = run_async(migrate())
    where = ctx.target.describe()
    if added:
        console.note(f"{where}: added {len(added)} column(s): {', '.join(added)}")
    else:
        console.note(f"{where}: already up to date")


@db_app.command("import")
@guarded
def db_import(
    file: Annotated[Path, typer.Argument(help="Units as JSONL (one object per line) or CSV.")],
    job: JobOption = None,
) -> None:
    """Load units into the local SQLite store: all rows or none; re-importing updates inputs."""
    ctx = load_context(job)
    if ctx.target.kind != "sqlite" or ctx.target.path is None:
        raise ConfigError("db import writes to a local SQLite store: set KNRUN_STORE=sqlite:PATH")
    report = import_units(file, ctx.target.path, ctx.job)
    console.note(
        f"{file}: {report.rows} rows into {ctx.target.describe()} table {ctx.job.source.table} "
        f"({report.inserted} new, {report.updated} updated"
        + (", table created" if report.table_created else "")
        + (f", columns added: {', '.join(report.columns_added)}" if report.columns_added else "")
        + "). Next: knrun db migrate"
    )


# -- demo and simulators ---------------------------------------------------------------------------

sim_app = typer.Typer(
    help="The simulators of xAI, its Management API and D1.", no_args_is_help=True
)
app.add_typer(sim_app, name="sim")


@app.command("demo")
@guarded
def demo(
    scenario: Annotated[
        str, typer.Option(help="normal | incident | credits | flaky: which guard to watch fire.")
    ] = "normal",
    units: Annotated[int, typer.Option(min=20, help="Synthetic units to generate.")] = 300,
    store: Annotated[str, typer.Option(help="d1 (REST, simulated) or sqlite.")] = "d1",
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="An empty folder to work in. Default: a new temporary one.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rehearse the whole pipeline offline: simulated xAI and D1, synthetic units, then the real
    db migrate, pricing sync, preflight and go. No keys, no network, under a minute."""
    plan = demo_run.Plan(scenario=scenario, units=units, store=store, folder=folder)
    code = demo_run.run(plan, _invoke, console.note)
    if code:
        raise typer.Exit(code)


def _invoke(args: list[str]) -> int:
    """Run one knrun command in this process, as if typed: the demo's way to use the real CLI."""
    result = typer.main.get_command(app).main(args=args, prog_name="knrun", standalone_mode=False)
    return result if isinstance(result, int) else 0


@sim_app.command("serve")
@guarded
def sim_serve(
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8787,
    scenario: Annotated[
        Path | None,
        typer.Option(
            help="Scenario TOML (models, prices, balance, latency, faults).", show_default=False
        ),
    ] = None,
    d1_database: Annotated[
        Path, typer.Option("--d1-database", help="SQLite file behind the D1 simulator.")
    ] = Path("sim-d1.sqlite"),
) -> None:
    """Serve the simulators on one loopback port until Ctrl-C, and print the settings that point
    knrun (or any client) at them."""
    simulators = Simulators(
        XaiSimulator(load_scenario(scenario) if scenario else None), D1Simulator(d1_database)
    )
    origin = f"http://{host}:{port}"
    console.note(
        f"simulators on {origin}: xAI at /v1, its Management API at /v1/billing, "
        f"D1 at /client/v4 (database {d1_database}). Settings for knrun:"
    )
    for key, value in simulators.env(origin).items():
        console.note(f"{key}={value}")
    console.note("KNRUN_STORE=d1\n(Ctrl-C to stop)")
    serve_forever(simulators, host, port)


# -- spool ----------------------------------------------------------------------------------------

VersionOption = Annotated[
    str | None,
    typer.Option(
        "--version",
        help="The job version to act on. Default: every version with entries.",
        show_default=False,
    ),
]


@spool_app.callback()
@guarded
def spool_list(ctx: typer.Context) -> None:
    """Pending and quarantined entries for every job and version (`knrun spool` alone)."""
    if ctx.invoked_subcommand is None:
        tables.show_spool(run_async(spool_ops.listing()))


@spool_app.command("replay")
@guarded
def spool_replay(job: JobOption = None, version: VersionOption = None) -> None:
    """Write the job's pending entries to the store (another version's as that version's)."""
    written = run_async(spool_ops.replay(load_context(job), version))
    if not written:
        console.note("nothing pending for this job")
    for each, count in written.items():
        console.note(f"v{each}: {count} results written")


@spool_app.command("requeue")
@guarded
def spool_requeue(job: JobOption = None, version: VersionOption = None) -> None:
    """Move the job's quarantined entries back to pending, for `replay` to try again."""
    versions = run_async(spool_ops.requeue(load_context(job), version))
    console.note(f"requeued: {', '.join(versions) or 'nothing quarantined'}")


@spool_app.command("set-aside")
@guarded
def spool_set_aside(
    version: Annotated[str, typer.Option("--version", help="The job version to set aside.")],
    job: JobOption = None,
    reason: Annotated[
        str, typer.Option(help="Kept with the entries.")
    ] = "set aside by the operator",
) -> None:
    """Keep a version's pending entries out of the way (in quarantine), so a run of another
    version may start. `requeue` brings them back."""
    run_async(spool_ops.set_aside(load_context(job), version, reason))
    console.note(f"v{version}: pending entries set aside (see `knrun spool`)")


# -- status and pricing ---------------------------------------------------------------------------


@app.command("status")
@guarded
def status(
    job: JobOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for dashboards.")] = False,
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Count units failed this often as exhausted."),
    ] = 3,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh", help="Count the table now, not reuse a count up to 30 s old (D1 bills rows)."
        ),
    ] = False,
) -> None:
    """Progress of the job's current version: done, failed by reason, retry-exhausted,
    remaining, leases, spent, last processed, current runs, ETA from the last run's rate."""
    ctx = load_context(job)

    async def read() -> dict[str, Any]:
        store = ctx.open_store()
        try:
            progress, runs, age = await store.status(
                max_attempts=max_attempts, fresh_s=0.0 if fresh else STATUS_FRESH_S
            )
        finally:
            await store.close()
        held = await spool_ops.counts(ctx.job.name, ctx.job.version)
        return status_report(
            ctx.job,
            ctx.target.describe(),
            progress,
            runs,
            now=datetime.now(UTC),
            max_attempts=max_attempts,
            spool=held,
            counted_s_ago=age,
        )

    report = run_async(read())
    if as_json:
        console.out.print_json(json.dumps(report))
    else:
        tables.show_status(report)


@pricing_app.command("show")
@guarded
def pricing_show(job: JobOption = None, pricing: PricingOption = None) -> None:
    """Show pricing.toml; fails if the job's model is missing from it or retired."""
    table = load_pricing_for(pricing)
    spec = optional_job(job, load_settings())
    tables.show_pricing(table, spec.model if spec else None, today())
    if spec is not None:
        table.price_for(spec.model)


@pricing_app.command("check")
@guarded
def pricing_check(
    job: JobOption = None,
    pricing: PricingOption = None,
    max_age_days: Annotated[
        int, typer.Option(help="Fail when a model's verified_at is older than this.")
    ] = MAX_AGE_DAYS,
) -> None:
    """Compare pricing.toml with xAI's live prices; fails on any difference over 1%, a stale
    verified_at, or a job model that is retired or not on the live list."""
    _, table, spec, live = _against_live(job, pricing)
    result = check_prices(
        table,
        live,
        job_model=spec.model if spec else None,
        today=today(),
        max_age_days=max_age_days,
    )
    tables.show_price_check(result)
    if not result.ok:
        raise ConfigError(
            f"pricing check failed ({len(result.problems)} problem(s)); read the live prices, then "
            f"`knrun pricing sync --pricing {table.path}`"
        )
    console.note(f"{table.path}: matches the live list")


@pricing_app.command("sync")
@guarded
def pricing_sync(
    job: JobOption = None,
    pricing: PricingOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the diff; write nothing.")
    ] = False,
) -> None:
    """Write xAI's live prices and today's date into pricing.toml, keeping comments and other
    models, and show the diff."""
    settings, table, spec, live = _against_live(job, pricing)
    result = sync_prices(
        table,
        live,
        job_model=spec.model if spec else None,
        today=today(),
        source=f"{settings.xai_base_url.rstrip('/')}/language-models",
    )
    tables.show_sync(result, table.path, dry_run=dry_run)
    if result.changed and not dry_run:
        write_atomically(table.path, result.after)


# -- preflight ------------------------------------------------------------------------------------


@app.command("preflight")
@guarded
def preflight(
    job: JobOption = None,
    pricing: PricingOption = None,
    balance: Annotated[
        str | None,
        typer.Option(
            "--balance",
            help="Prepaid credit in USD, when there is no XAI_MANAGEMENT_KEY to read it. "
            "Recorded as attested.",
            show_default=False,
        ),
    ] = None,
    canary: Annotated[int, typer.Option("--canary", min=1, help="Canary size (real units).")] = 10,
    sample: Annotated[
        int, typer.Option("--sample", min=1, help="Prompts rendered to measure input tokens.")
    ] = 500,
    overshoot: Annotated[
        str, typer.Option("--overshoot", help="USD allowed past the balance (billing lag).")
    ] = "5",
    max_age_days: Annotated[
        int, typer.Option(help="Fail when the model's verified_at is older than this.")
    ] = MAX_AGE_DAYS,
) -> None:
    """The pre-run checklist: model current, prices true, estimate, balance, a real canary.
    Writes the receipt `knrun go` requires; any FAIL exits non-zero and writes none."""
    ctx = load_context(job)
    table = load_pricing_for(pricing)
    attested = parse_usd(balance, "--balance")
    if attested is None and ctx.settings.xai_management_key is None and sys.stdin.isatty():
        entered = typer.prompt("Prepaid credit balance in USD (console.x.ai, billing)")
        attested = parse_usd(entered, "balance")
    options = Options(
        canary=canary,
        sample=sample,
        overshoot_ticks=parse_usd(overshoot, "--overshoot") or 0,
        attested_balance_ticks=attested,
        max_age_days=max_age_days,
    )

    async def canary_run(units: int, unit_ticks: int) -> CanaryFigures:
        price = table.price_for(ctx.job.model)
        return await run_canary(ctx, price, units, unit_ticks, options.concurrency)

    console.note(
        f"preflight: {ctx.job.name} v{ctx.job.version} on {ctx.job.model}, "
        f"store {ctx.target.describe()}"
    )
    outcome = run_async(Preflight(ctx, table, options, checklist.show_step, canary_run).run())
    if outcome.estimate is not None and outcome.estimate.remaining:
        checklist.show_costs(outcome.estimate, ctx.job.model)
    if outcome.receipt is not None:
        console.note("PASS: `knrun go` may run for the next 24 h")
    elif (
        outcome.estimate is not None
        and outcome.estimate.remaining == 0
        and not any(not step.ok for step in outcome.steps)
    ):
        console.note("nothing to run: no receipt needed")
    else:
        failed = next(step for step in outcome.steps if not step.ok)
        raise RunStopped(
            f"preflight failed at step {failed.number} ({failed.title}): no receipt written",
            outcome.exit_code,
        )


# -- the run --------------------------------------------------------------------------------------

ConcurrencyOption = Annotated[
    int, typer.Option("--concurrency", min=1, max=500, help="Workers (requests in flight).")
]
MaxSpendOption = Annotated[
    str | None,
    typer.Option(
        "--max-spend",
        help="Spend cap in USD. Default: the receipt's approved amount, less what earlier go "
        "runs spent since preflight.",
        show_default=False,
    ),
]
LeaseOption = Annotated[
    float,
    typer.Option(
        "--lease-minutes",
        min=0.01,
        help="How long a claimed unit is held for this run; renewed while the run lives, "
        "so a dead run's units come back after this.",
    ),
]
Max429Option = Annotated[
    int,
    typer.Option(
        "--max-429-rounds",
        min=1,
        help="Circuit breaker: rounds of 429s in a row with no success between them (a round "
        "is one burst, however many requests it hits).",
    ),
]


@app.command("go")
@guarded
def go(
    job: JobOption = None,
    pricing: PricingOption = None,
    concurrency: ConcurrencyOption = 50,
    max_spend: MaxSpendOption = None,
    max_429_rounds: Max429Option = 10,
    lease_minutes: LeaseOption = 15,
) -> None:
    """Run the job: every eligible unit, resumably, under the guards. Needs a passing
    `knrun preflight` receipt for this model, prompt and pricing, younger than 24 h."""
    ctx = load_context(job)
    price = load_pricing_for(pricing).price_for(ctx.job.model)
    receipt = load_valid_receipt(STATE_DIR, ctx.job, price)
    cap = parse_usd(max_spend, "--max-spend") or run_async(approved_left(ctx, receipt))
    if cap <= 0:
        raise RunStopped(
            f"the approved spend of {receipt_describe(receipt)} is used up: run `knrun preflight` "
            "again, or pass --max-spend",
            ExitCode.SPEND_CAP,
        )
    canary_output = receipt.canary.get("output_tokens_per_unit")
    config = RunConfig(
        concurrency=concurrency,
        max_429_rounds=max_429_rounds,
        lease_s=lease_minutes * 60,
        cap_ticks=cap,
        estimate_unit_ticks=receipt.estimate_unit_ticks,
        output_tokens_estimate=int(canary_output) if canary_output else None,
        # The canary's charges can reach the prepaid balance during this run.
        balance_slack_ticks=int(receipt.canary.get("billed_ticks") or 0) + BALANCE_SLACK_TICKS,
    )
    finish(run_async(run_command(RunCommand("go", ctx, price, config, live=console.is_terminal()))))


@app.command("retry")
@guarded
def retry(
    job: JobOption = None,
    pricing: PricingOption = None,
    max_units: Annotated[
        int, typer.Option("--max-units", min=1, help="Units per retry run.")
    ] = 500,
    max_spend: Annotated[
        str, typer.Option("--max-spend", help="Spend cap in USD for this retry run.")
    ] = "2",
    max_attempts: Annotated[
        int,
        typer.Option("--max-attempts", min=1, help="Leave a unit alone after this many failures."),
    ] = 3,
    concurrency: ConcurrencyOption = 10,
    balance: Annotated[
        str | None,
        typer.Option(
            "--balance",
            help="Prepaid credit in USD when there is no management key.",
            show_default=False,
        ),
    ] = None,
    max_429_rounds: Max429Option = 10,
    all_reasons: Annotated[
        bool,
        typer.Option(
            "--all-reasons",
            help="Also retry failures that depend on the request (truncated, refusal, "
            "schema_mismatch, prompt_too_long, bad_request) although it has not changed.",
        ),
    ] = False,
) -> None:
    """Re-run units that failed at this version, for cron: its own light preflight (model
    current, prices true, balance covers the cap), a lock against overlapping runs, plain log
    lines, the documented exit codes. By default only failures a second try can change
    (invalid_json, timeout, dropped, bad_response, retries_exhausted), and failures of a request
    that has changed since (the prompt, max_output_tokens, the model...)."""
    ctx = load_context(job)
    table = load_pricing_for(pricing)
    cap = parse_usd(max_spend, "--max-spend")
    assert cap is not None
    options = Options(attested_balance_ticks=parse_usd(balance, "--balance"))
    checks = Preflight(ctx, table, options, checklist.show_step, _no_canary)
    outcome = run_async(checks.for_retry(cap))
    if outcome.exit_code != ExitCode.OK:
        failed = next(step for step in outcome.steps if not step.ok)
        raise RunStopped(f"retry checks failed at {failed.title}: nothing run", outcome.exit_code)
    price = table.price_for(ctx.job.model)
    unit = run_async(retry_unit_cost(ctx, price))
    config = RunConfig(
        concurrency=concurrency,
        max_429_rounds=max_429_rounds,
        cap_ticks=cap,
        estimate_unit_ticks=unit.ticks,
        output_tokens_estimate=unit.output_tokens,
        failed_only=True,
        max_attempts=max_attempts,
        retry_reasons=None if all_reasons else TRANSIENT_REASONS,
        max_units=max_units,
    )
    launched = run_async(run_command(RunCommand("retry", ctx, price, config, live=False)))
    exhausted = run_async(exhausted_units(ctx, max_attempts))
    if exhausted:
        console.warn(
            f"{len(exhausted)}{'+' if len(exhausted) == 20 else ''} units have failed "
            f"{max_attempts} times and are no longer retried: "
            + ", ".join(f"{row['unit_id']} ({row['error']})" for row in exhausted[:5])
            + (" ..." if len(exhausted) > 5 else "")
        )
    finish(launched)


async def _no_canary(_units: int, _unit_ticks: int) -> CanaryFigures:
    raise AssertionError("retry runs no canary")  # pragma: no cover


def finish(launched: Launched) -> None:
    """The run's last word: a summary line, and its exit code."""
    code, text = outcome_message(launched)
    if code == ExitCode.OK:
        console.note(text)
        return
    raise RunStopped(text, code)


def _against_live(
    job: Path | None, pricing: Path | None
) -> tuple[Settings, PricingTable, JobSpec | None, list[LiveModel]]:
    """What `pricing check` and `sync` both start from: the file, the job if any, the live list."""
    settings = load_settings()
    table = load_pricing_for(pricing)
    return settings, table, optional_job(job, settings), run_async(fetch_live_models(settings))


def today() -> date:
    return datetime.now(UTC).date()


def main() -> None:
    app()
