"""`knrun show ID`: one unit as knrun sees it: the prompt the job renders for it, its stored
result or why it failed, and every request knrun paid (or may have paid) for it."""

from __future__ import annotations

import json
from typing import Any

from knrun.commands.status import usd
from knrun.context import Context
from knrun.errors import InputError
from knrun.job import JobSpec
from knrun.store.reads import Row, read_unit


def stored_result(job: JobSpec, row: Row) -> dict[str, Any]:
    """The output fields as the reply gave them (lists back from their JSON text)."""
    return {field.name: decode(field.type, row[job.output_column(field)]) for field in job.outputs}


def decode(kind: str, value: Any) -> Any:
    """A stored output value as its field type: lists from JSON text, booleans from 0/1."""
    if value is None:
        return None
    if kind == "string_list":
        return json.loads(str(value))
    if kind == "boolean":
        return bool(value)
    return value


def charge_view(row: Row) -> dict[str, Any]:
    """One request: when, which run and model, what it bought and what it cost."""
    cost, basis = _cost(row)
    possible = int(row["possible_ticks"] or 0)
    return {
        "at": row["at"],
        "run_id": row["run_id"],
        "kind": row["kind"],
        "version": row["version"],
        "model": row["model"],
        "outcome": row["outcome"],
        "input_tokens": row["input_tokens"],
        "cached_tokens": row["cached_tokens"],
        "output_tokens": row["output_tokens"],
        "reasoning_tokens": row["reasoning_tokens"],
        "latency_ms": row["latency_ms"],
        "cost_usd": usd(cost),
        "cost_basis": basis,
        "possible_max_usd": usd(possible) if possible else None,
    }


def unit_view(job: JobSpec, row: Row, charges: list[Row]) -> dict[str, Any]:
    """What `knrun show` prints; `--json` prints exactly this."""
    inputs = {column: row[column] for column in [job.source.id, *job.source.columns]}
    done = row[job.source.prefix + "prompt_version"] == job.version
    failed_here = (
        not done
        and row[job.source.prefix + "status_version"] == job.version
        and row[job.source.prefix + "status"] == "failed"
    )
    state = "done" if done else "failed" if failed_here else "remaining"
    stored_version = row[job.source.prefix + "prompt_version"]
    return {
        "id": row[job.source.id],
        "job": job.name,
        "version": job.version,
        "state": state,
        "attempts": row[job.source.prefix + "attempts"],
        "messages": job.render(inputs),
        # A result of another version stays in the columns until this one's replaces it.
        "result": stored_result(job, row) if stored_version is not None else None,
        "result_version": stored_version,
        "error": row[job.source.prefix + "error"] if failed_here else None,
        "charges": [charge_view(charge) for charge in charges],
        "spent_usd": usd(sum(_cost(charge)[0] for charge in charges)),
    }


def _cost(row: Row) -> tuple[int, str]:
    """A request's cost in ticks at best knowledge (as `Money.spent_ticks` counts it), and
    where the figure comes from."""
    if row["billed_ticks"] is not None:
        return int(row["billed_ticks"]), "billed"
    if int(row["possible_ticks"] or 0):
        return int(row["expected_ticks"] or 0), "possibly billed (expected)"
    return int(row["tracked_ticks"] or 0), "tracked (pricing.toml)"


async def show_unit(ctx: Context, unit_id: str) -> dict[str, Any]:
    async with ctx.open_store() as store:
        found = await read_unit(store, unit_id)
    if found is None:
        raise InputError(f"no unit with id {unit_id!r} in table {ctx.job.source.table}")
    return unit_view(ctx.job, *found)
