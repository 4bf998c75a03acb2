"""Tables for the one-shot commands: status and pricing."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from rich import box
from rich.table import Table

from knrun.display.console import out
from knrun.pricecheck import PriceCheck, SyncResult
from knrun.pricing import PricingTable, format_price

Row = tuple[str, str, str]


def show_status(report: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    for row in [*_unit_rows(report), *_money_rows(report), *_run_rows(report)]:
        table.add_row(*row)
    out.print(
        f"[bold]{report['job']}[/] v{report['version']} · {report['model']} · {report['store']}"
    )
    if report.get("figures_reused"):
        # Counts and money come from the store's last count, reused to spare D1's row reads.
        out.print(
            f"figures counted {report['counted_s_ago']} s ago and reused (`knrun status "
            "--fresh` counts now)"
        )
    out.print(table)


def _unit_rows(report: dict[str, Any]) -> list[Row]:
    total = report["total"] or 0
    share = f" ({report['done'] / total:.1%})" if total else ""
    reasons = ", ".join(f"{name} {count}" for name, count in report["failed_by_reason"].items())
    rows: list[Row] = [
        ("in scope", f"{total:,}", "rows matching the job's where"),
        ("done", f"{report['done']:,}", share.strip()),
        ("failed", f"{report['failed']:,}", reasons),
    ]
    if report.get("retry_exhausted"):
        rows.append(
            (
                "retry exhausted",
                f"{report['retry_exhausted']:,}",
                f"failed {report['max_attempts']}+ times: retry leaves them alone",
            )
        )
    rows.append(("remaining", f"{report['remaining']:,}", f"leased now: {report['leased']:,}"))
    return rows


def _money_rows(report: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    rows.append(
        (
            "spent",
            f"${report['spent_usd']}",
            f"billed ${report['billed_usd']} over {report['requests']:,} requests; tracked "
            f"${report['tracked_usd']}",
        )
    )
    if report["unbilled_replies"]:
        rows.append(
            (
                "without a bill",
                f"{report['unbilled_replies']:,}",
                f"replies with no cost_in_usd_ticks: ${report['unbilled_tracked_usd']} at "
                "pricing.toml's prices",
            )
        )
    if report["possibly_billed_requests"]:
        rows.append(
            (
                "possibly billed",
                f"{report['possibly_billed_requests']:,}",
                f"timed out or dropped after sending: ~${report['possibly_billed_expected_usd']}, "
                f"up to ${report['possibly_billed_usd']}",
            )
        )
    per_unit = report["cost_per_unit_usd"]
    rows.append(
        ("cost of done", f"${report['done_cost_usd']}", f"${per_unit}/unit" if per_unit else "")
    )
    return rows


def _run_rows(report: dict[str, Any]) -> list[Row]:
    rows: list[Row] = [("last processed", report["last_processed_at"] or "never", "")]
    if report.get("rate_per_min"):
        eta = report["eta_minutes"]
        rows.append(("rate", f"{report['rate_per_min']:,}/min", "of the last run"))
        rows.append(("eta", f"{eta:,} min" if eta is not None else "—", "at that rate"))
    for run in report.get("current_runs", []):
        note = "no update for a minute: killed?" if run["state"] == "stale" else "running"
        rows.append(
            (
                f"{run['kind']} run",
                run["run_id"],
                f"{note}; {run['units_ok']} ok, {run['units_failed']} failed, "
                f"${run['billed_usd']} billed; updated {run['updated_at']}",
            )
        )
    if report.get("spool_pending") or report.get("spool_quarantined"):
        rows.append(
            (
                "spool",
                f"{report['spool_pending']:,}",
                f"paid results here not yet in the store; {report['spool_quarantined']:,} "
                "quarantined (`knrun spool`)",
            )
        )
    if report.get("spool_pending_other_versions"):
        rows.append(
            (
                "other versions",
                f"{report['spool_pending_other_versions']:,}",
                "paid results of another job or version wait in the spool: `knrun spool`",
            )
        )
    for batch in report.get("open_batches", []):
        rows.append(
            (
                "open batch",
                batch["batch_id"],
                f"v{batch['version']}, left by run {batch['run_id']}: `{batch['collect_with']}` "
                "collects it, `knrun batch list` shows it",
            )
        )
    if report.get("dead_runs"):
        rows.append(
            (
                "dead runs",
                f"{len(report['dead_runs'])}",
                "their process died; the next start in their folder wrote what they had spooled",
            )
        )
    last = report.get("last_run")
    if last and last["state"] not in ("running", "stale"):
        rows.append(
            (
                "last run",
                last["run_id"],
                f"{last['kind']}: exit {last['exit_code']} ({last['exit_reason']})",
            )
        )
    return rows


def show_spool(listing: Any) -> None:
    """`knrun spool`: what waits, for every job and version."""
    if not listing.held:
        out.print("the spool is empty: every paid result is in the store", markup=False)
        return
    table = Table(box=box.SIMPLE_HEAD, title="the local spool (.knrun/spool.sqlite)")
    for name in ("job", "version", "pending", "quarantined", "why quarantined"):
        table.add_column(name, justify="right" if name in ("pending", "quarantined") else "left")
    for held in listing.held:
        reasons = "; ".join(listing.reasons.get((held.job, held.version), []))
        table.add_row(held.job, held.version, f"{held.pending:,}", f"{held.quarantined:,}", reasons)
    out.print(table)
    out.print(
        "pending: written at the next start of this job version, or now with "
        "`knrun spool replay`; quarantined: the store refused them (or they were set aside), "
        "`knrun spool requeue` puts them back",
        markup=False,
    )


def show_pricing(pricing: PricingTable, highlight: str | None, today: date) -> None:
    table = Table(
        title=f"{pricing.path}: USD per million tokens (* = the job's model)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("model", no_wrap=True)
    for name in ("input", "cached", "output", "batch in", "batch out"):
        table.add_column(name, justify="right")
    table.add_column("verified", no_wrap=True)
    for name in sorted(pricing.models):
        price = pricing.models[name]
        age = (today - price.verified_at).days
        table.add_row(
            f"* {name}" if name == highlight else f"  {name}",
            *(
                "—" if value is None else format_price(value)
                for value in (
                    price.input,
                    price.cached_input,
                    price.output,
                    price.batch_input,
                    price.batch_output,
                )
            ),
            f"{price.verified_at} ({age} d ago)",
        )
    out.print(table)
    if pricing.retired:
        out.print(f"retired (refused): {', '.join(sorted(pricing.retired))}", markup=False)


def show_price_check(result: PriceCheck) -> None:
    """The prices that differ, in a table; those that match, counted on one line (a check
    where only dates are stale is its FAIL lines, not a page of equal prices)."""
    differing = [row for row in result.rows if not row.ok]
    models = sorted({row.model for row in result.rows if row.ok})
    matching = len(result.rows) - len(differing)
    if differing:
        table = Table(
            box=box.SIMPLE_HEAD,
            title="pricing.toml vs live (USD per 1M tokens)",
            title_justify="left",
        )
        for name in ("model", "price", "pricing.toml", "live", ""):
            table.add_column(name, justify="right" if name in ("pricing.toml", "live") else "left")
        for row in differing:
            live = "—" if row.live is None else format_price(row.live)
            table.add_row(row.model, row.kind, format_price(row.file), live, "[bold red]DIFFERS[/]")
        out.print(table)
    if matching:
        every = "every price" if not differing else f"the other {matching} prices"
        out.print(
            f"pricing.toml vs live: {every} match{'es' if not differing else ''} "
            f"({matching} prices of {', '.join(models)})",
            markup=False,
        )
    for line in result.notes:
        out.print(f"  note: {line}", markup=False, style="dim")
    for line in result.problems:
        out.print(f"  FAIL: {line}", markup=False, style="bold red")


def show_sync(result: SyncResult, path: Path, *, dry_run: bool) -> None:
    if not result.changed:
        out.print(f"{path}: already matches the live list", markup=False)
        return
    dates_only = not result.updated and not result.added
    if not dates_only:  # else the diff is every model's verified_at line: nothing to review
        out.print(result.diff(path), markup=False, end="")
    for line in result.warnings:
        out.print(f"warning: {line}", markup=False, style="yellow")
    if dates_only:
        done = "would set" if dry_run else "set"
        out.print(
            f"{path}: every price matches the live list; {done} today's verified_at date "
            "(only the dates change)",
            markup=False,
        )
        return
    done = "would update" if dry_run else "updated"
    summary = [f"{done} {', '.join(result.updated) or 'dates only'}"]
    if result.added:
        summary.append(f"added {', '.join(result.added)}")
    out.print(f"{path}: {'; '.join(summary)}", markup=False)
