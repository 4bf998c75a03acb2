"""`knrun go` and `knrun retry`: the run commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knrun.cli.app import (
    ConcurrencyOption,
    JobOption,
    JsonOption,
    MaxConcurrencyOption,
    PricingOption,
    app,
    guarded,
    parse_concurrency,
    parse_usd,
    run_async,
)
from knrun.cli.batch import collect
from knrun.cli.session import RunCommand, finish, run_command
from knrun.commands.go import GoOptions, go_config, go_receipt, nothing_to_run
from knrun.commands.retry import RetryOptions, nothing_to_retry, retry_config
from knrun.commands.summary import still_failing
from knrun.context import Context, load_context, load_pricing_for
from knrun.display import checklist, console
from knrun.display.summary import show_still_failing
from knrun.errors import InputError, NotAuthorised
from knrun.pricing import ModelPrice
from knrun.run.batch import ops
from knrun.run.config import AUTO, DEFAULT_MAX_CONCURRENCY, RunConfig

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
    concurrency: ConcurrencyOption = AUTO,
    max_concurrency: MaxConcurrencyOption = DEFAULT_MAX_CONCURRENCY,
    max_spend: MaxSpendOption = None,
    max_429_rounds: Max429Option = 10,
    lease_minutes: LeaseOption = 15,
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            help="Through xAI's Batch API: cheaper where the model has batch prices, outside "
            "the rate limits, results within about 24 h. Re-run to collect; resumes the open "
            "batch. Needs `knrun preflight --batch`.",
        ),
    ] = False,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="With --batch: end once what the guards allow now is submitted; `knrun batch "
            "collect` (from cron, say) writes the results, a later `go --batch` adds the rest.",
        ),
    ] = False,
    max_wait: Annotated[
        float | None,
        typer.Option(
            "--max-wait",
            min=0,
            help="With --batch: minutes to wait for xAI before leaving the batch open for "
            "`knrun batch collect`. Default: until every result is in.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the job: every eligible unit, resumably, under the guards. Needs a passing
    `knrun preflight` receipt for this model, prompt and pricing, younger than 24 h."""
    options = GoOptions(
        concurrency=parse_concurrency(concurrency),
        max_concurrency=max_concurrency,
        max_spend_ticks=parse_usd(max_spend, "--max-spend"),
        max_429_rounds=max_429_rounds,
        lease_minutes=lease_minutes,
        batch=batch,
        no_wait=no_wait,
        max_wait_s=None if max_wait is None else max_wait * 60,
    )
    if (no_wait or max_wait is not None) and not batch:
        raise InputError("--no-wait and --max-wait go with --batch")
    with console.results_to_stderr(as_json):
        run_go(load_context(job), pricing, options, as_json=as_json)


def run_go(ctx: Context, pricing: Path | None, options: GoOptions, *, as_json: bool) -> None:
    price = load_pricing_for(pricing).price_for(ctx.job.model)
    batch = options.batch
    config = batch_config(ctx, price, options) if batch else live_config(ctx, price, options)
    if config is None:
        nothing_done("go", as_json)
        return
    price = price.for_batch() if batch else price  # a batch run's costs at the batch rate
    command = RunCommand("go", ctx, price, config, live=console.is_terminal())
    finish(run_async(run_command(command)), as_json=as_json)


def nothing_done(command: str, as_json: bool) -> None:
    """With nothing to run (already said on the log), `--json` still ends with its object."""
    if as_json:
        console.json_result({"command": command, "ran": False, "exit_code": 0})


def batch_config(ctx: Context, price: ModelPrice, options: GoOptions) -> RunConfig:
    collect_first(ctx, price, options)
    return run_async(go_config(ctx, price, options))


def warn_if_held_below(config: RunConfig, options: GoOptions) -> None:
    wanted = min(options.concurrency or options.max_concurrency, options.max_concurrency)
    if config.workers < wanted:
        console.warn(
            f"at most {config.workers:,} units in flight: the preflight receipt's balance "
            "allowance was sized for that many (run preflight with a higher --max-concurrency)"
        )


def live_config(ctx: Context, price: ModelPrice, options: GoOptions) -> RunConfig | None:
    """The live run's configuration; None (after saying so) when nothing is left to run, in
    which case neither a receipt nor what is left of its approval matters."""

    def idle() -> bool:
        line = run_async(nothing_to_run(ctx))
        if line is not None:
            console.note(line)
        return line is not None

    try:
        receipt = go_receipt(ctx, price, options)
    except NotAuthorised:
        if idle():
            return None
        raise
    # What is left of the receipt's approval is worked out once the spool is replayed (in
    # `launch`): paid results waiting there count once, and reach the store first.
    config = run_async(go_config(ctx, price, options, receipt))
    warn_if_held_below(config, options)
    return config


def collect_first(ctx: Context, price: ModelPrice, options: GoOptions) -> None:
    """`go --batch` collects before it adds, whatever its receipt says (collecting buys
    nothing): every open batch of this version when the receipt is not valid, else those it
    will not resume itself (a canary's left open). Without a receipt it ends there."""
    try:
        go_receipt(ctx, price, options)
        refused = None
    except NotAuthorised as exc:
        refused = exc
    batches = [b for b in run_async(ops.open_here(ctx)) if refused or b.made_for != "go"]
    # --no-wait: what is done now, then leave; --max-wait: that long at most.
    wait = 0.0 if options.no_wait else options.max_wait_s
    if wait is not None:
        wait /= 60
    for launched in collect(ctx, price.for_batch(), batches, wait):
        if launched.result.exit_code:
            finish(launched)
        console.note(f"run {launched.result.run_id}: {launched.result.reason}")
    if refused is not None:
        if batches:
            raise NotAuthorised(f"open batches collected; adding more: {refused}")
        raise refused


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
    concurrency: ConcurrencyOption = AUTO,
    max_concurrency: MaxConcurrencyOption = 100,
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
    as_json: JsonOption = False,
) -> None:
    """Re-run units that failed at this version, for cron: its own light preflight (model
    current, prices true, balance covers the cap), a lock against overlapping runs, plain log
    lines, the documented exit codes. By default only failures a second try can change
    (invalid_json, timeout, dropped, bad_response, retries_exhausted), and failures of a request
    that has changed since (the prompt, max_output_tokens, the model...)."""
    options = RetryOptions(
        max_units=max_units,
        cap_ticks=parse_usd(max_spend, "--max-spend") or 0,
        max_attempts=max_attempts,
        concurrency=parse_concurrency(concurrency),
        max_concurrency=max_concurrency,
        attested_balance_ticks=parse_usd(balance, "--balance"),
        max_429_rounds=max_429_rounds,
        all_reasons=all_reasons,
    )
    with console.results_to_stderr(as_json):
        run_retry(load_context(job), pricing, options, as_json=as_json)


def run_retry(ctx: Context, pricing: Path | None, options: RetryOptions, *, as_json: bool) -> None:
    if (line := run_async(nothing_to_retry(ctx, options))) is not None:
        console.note(line)
        still = run_async(still_failing(ctx, options.max_attempts))
        show_still_failing(still)
        if as_json:
            console.json_result(
                {"command": "retry", "ran": False, "exit_code": 0, "still_failing": still.to_json()}
            )
        return
    table = load_pricing_for(pricing)
    price, config = run_async(retry_config(ctx, table, options, checklist.show_step))
    launched = run_async(run_command(RunCommand("retry", ctx, price, config, live=False)))
    still = run_async(still_failing(ctx, options.max_attempts))
    finish(launched, still=still, as_json=as_json)
