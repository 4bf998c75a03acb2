"""`knrun pricing show|check|sync`: pricing.toml against the provider's live prices."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knrun.cli.app import JobOption, PricingOption, guarded, pricing_app, run_async, today
from knrun.config import Settings, load_settings
from knrun.context import fetch_live_models, load_pricing_for, optional_job
from knrun.display import console, tables
from knrun.errors import ConfigError
from knrun.files import write_atomically
from knrun.job import JobSpec
from knrun.pricecheck import MAX_AGE_DAYS, check_prices, sync_prices
from knrun.pricing import PricingTable
from knrun.xai import LiveModel


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


def _against_live(
    job: Path | None, pricing: Path | None
) -> tuple[Settings, PricingTable, JobSpec | None, list[LiveModel]]:
    """What `pricing check` and `sync` both start from: the file, the job if any, the live list."""
    settings = load_settings()
    table = load_pricing_for(pricing)
    return settings, table, optional_job(job, settings), run_async(fetch_live_models(settings))
