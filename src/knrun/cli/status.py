"""`knrun status`: progress of the job's current version, as a table or JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from knrun.cli.app import JobOption, app, guarded, run_async
from knrun.commands.status import STATUS_FRESH_S, read_status
from knrun.context import load_context
from knrun.display import console, tables


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
    report = run_async(
        read_status(ctx, max_attempts=max_attempts, fresh_s=0.0 if fresh else STATUS_FRESH_S)
    )
    if as_json:
        console.out.print_json(json.dumps(report))
    else:
        tables.show_status(report)
