"""`knrun export`: the job's results as JSONL or CSV, written page by page as the store gives
them, so an export of any size holds one page in memory."""

from __future__ import annotations

import csv
import json
from typing import Any, Literal, TextIO

from knrun.commands.show import decode
from knrun.context import Context
from knrun.job import JobSpec
from knrun.store.reads import Row, results_pages

Format = Literal["jsonl", "csv"]
PAGE = 200  # rows per store request: a few MB of model output at most
STATE_FIELDS = ("knrun_state", "knrun_error")  # with --all: each row's state at this version


def record(job: JobSpec, row: Row, *, every: bool) -> dict[str, Any]:
    """One exported object: the unit's id, then each output field (by its name in the job)."""
    found: dict[str, Any] = {job.source.id: row[job.source.id]}
    done = row["knrun_state"] == "done"
    for field in job.outputs:
        value = row[job.output_column(field)] if done else None
        found[field.name] = decode(field.type, value)
    if every:
        found["knrun_state"] = row["knrun_state"]
        found["knrun_error"] = row["knrun_error"] if row["knrun_state"] == "failed" else None
    return found


def columns(job: JobSpec, *, every: bool) -> list[str]:
    names = [job.source.id, *(field.name for field in job.outputs)]
    return names + list(STATE_FIELDS) if every else names


def csv_cell(value: Any) -> Any:
    """Nested values as JSON text; booleans as true/false; None as an empty cell."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else value


async def export_results(ctx: Context, out: TextIO, fmt: Format, *, every: bool = False) -> int:
    """Write the job's results to `out`; returns how many rows."""
    job = ctx.job
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=columns(job, every=every), lineterminator="\n")
        writer.writeheader()
    count = 0
    async with ctx.open_store() as store:
        async for page in results_pages(store, page=PAGE, every=every):
            for row in page:
                item = record(job, row, every=every)
                if writer is None:
                    out.write(json.dumps(item, ensure_ascii=False) + "\n")
                else:
                    writer.writerow({key: csv_cell(value) for key, value in item.items()})
            count += len(page)
    return count
