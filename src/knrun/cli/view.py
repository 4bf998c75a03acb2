"""Looking back at a job: `knrun report`, `knrun show ID` and `knrun export`, what its runs
left in the store."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from knrun.cli.app import JobOption, app, guarded, run_async
from knrun.commands.export import Format, export_results
from knrun.commands.report import write_report
from knrun.commands.show import show_unit
from knrun.context import load_context
from knrun.display import console
from knrun.display.unit import show_unit_view
from knrun.errors import InputError

OutputOption = Annotated[
    Path | None,
    typer.Option("-o", "--output", help="File to write.", show_default=False, dir_okay=False),
]


@app.command("report")
@guarded
def report(job: JobOption = None, output: OutputOption = None) -> None:
    """An HTML report of the job's runs, in one self-contained file (no script, nothing
    fetched): spend and units over time, throughput and latency, prompt cache share, failures
    by reason, for all runs together and each recent run. Default file:
    knrun-report-<job>.html here; prints its path."""
    from knrun.display.report_html import render_report  # matplotlib: only when reporting

    path = run_async(write_report(load_context(job), output, render_report))
    console.note(str(path))


@app.command("show")
@guarded
def show(
    unit_id: Annotated[str, typer.Argument(metavar="ID", help="The unit's id.")],
    job: JobOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One unit: the prompt the job renders for it, its stored result (or why it failed), and
    each request paid for it (when, model, tokens, cost, run)."""
    ctx = load_context(job)
    view = run_async(show_unit(ctx, unit_id))
    if as_json:
        console.out.print_json(json.dumps(view, ensure_ascii=False))
    else:
        show_unit_view(view)


@app.command("export")
@guarded
def export(
    job: JobOption = None,
    fmt: Annotated[
        str, typer.Option("--format", metavar="jsonl|csv", help="jsonl: one object a line; csv.")
    ] = "jsonl",
    output: OutputOption = None,
    every: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every unit of the job, with knrun_state (done|failed|remaining) and "
            "knrun_error; results only for those done at this version.",
        ),
    ] = False,
) -> None:
    """The job's results: each unit's id and its output fields, to stdout (or -o FILE). By
    default only units done at the job's current version. CSV has a header row and lists as
    JSON text."""
    if fmt not in ("jsonl", "csv"):
        raise InputError(f"--format must be jsonl or csv, not {fmt!r}")
    ctx = load_context(job)
    chosen: Format = "csv" if fmt == "csv" else "jsonl"
    if output is None:
        try:
            run_async(export_results(ctx, sys.stdout, chosen, every=every))
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader stopped early (`knrun export | head`): what it took is what it wanted.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    try:
        with output.open("w", encoding="utf-8", newline="") as out:
            count = run_async(export_results(ctx, out, chosen, every=every))
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc}") from None
    console.err.print(f"{count:,} units written to {output}", markup=False)
