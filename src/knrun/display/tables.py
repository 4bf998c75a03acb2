"""Tables for the one-shot commands: status and pricing."""

from __future__ import annotations

from datetime import date
from typing import Any

from rich import box
from rich.table import Table

from knrun.display.console import out
from knrun.pricing import PricingTable


def show_status(report: dict[str, Any]) -> None:
    total = report["total"] or 0
    share = f" ({report['done'] / total:.1%})" if total else ""
    reasons = ", ".join(f"{name} {count}" for name, count in report["failed_by_reason"].items())
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    table.add_row("in scope", f"{total:,}", "rows matching the job's where")
    table.add_row("done", f"{report['done']:,}", share.strip())
    table.add_row("failed", f"{report['failed']:,}", reasons)
    if report.get("retry_exhausted"):
        table.add_row("retry exhausted", f"{report['retry_exhausted']:,}", "over --max-attempts")
    table.add_row("remaining", f"{report['remaining']:,}", f"leased now: {report['leased']:,}")
    table.add_row(
        "spent", f"${report['spent_usd']}", f"billed by runs; tracked ${report['tracked_usd']}"
    )
    per_unit = report["cost_per_unit_usd"]
    table.add_row(
        "cost of done", f"${report['done_cost_usd']}", f"${per_unit}/unit" if per_unit else ""
    )
    table.add_row("last processed", report["last_processed_at"] or "never", "")
    for key, label in (("eta", "eta"), ("rate_per_min", "last rate")):
        if report.get(key) is not None:
            table.add_row(label, str(report[key]), "")
    out.print(
        f"[bold]{report['job']}[/] v{report['version']} · {report['model']} · {report['store']}"
    )
    out.print(table)


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
                "—" if value is None else f"{value}"
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
