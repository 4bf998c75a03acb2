"""Preflight on screen: one line per step as it completes, then the cost comparison."""

from __future__ import annotations

from rich.table import Table

from knrun.display.console import out
from knrun.estimate import Estimate
from knrun.preflight import Step
from knrun.pricing import format_usd

TITLE_WIDTH = 24


def show_step(step: Step) -> None:
    verdict = "[bold green]PASS[/]" if step.ok else "[bold red]FAIL[/]"
    title = f"{step.number} {step.title}".ljust(TITLE_WIDTH)
    out.print(f"  {title} {verdict}  ", end="")
    out.print(step.summary, markup=False)
    indent = " " * (TITLE_WIDTH + 9)
    for line in step.details:
        out.print(f"{indent}{line}", markup=False, style="dim")
    for line in step.warnings:
        out.print(f"{indent}warning: {line}", markup=False, style="yellow")


def show_costs(estimate: Estimate, job_model: str) -> None:
    table = Table(
        title=f"the same {estimate.remaining:,} units on every priced model, cheapest first",
        title_justify="left",
        show_edge=False,
    )
    table.add_column("model")
    table.add_column("standard", justify="right")
    table.add_column("batch", justify="right")
    for cost in estimate.models:
        name = f"* {cost.model}" if cost.model == job_model else f"  {cost.model}"
        batch = format_usd(cost.batch_ticks, 2) if cost.batch_ticks is not None else "—"
        table.add_row(name, format_usd(cost.standard_ticks, 2), batch)
    out.print(table)
