"""`knrun batch list --json`: the batches knrun made at xAI, as one object for a script."""

from __future__ import annotations

from typing import Any

from knrun.commands.status import usd
from knrun.run.batch.handle import batch_counters
from knrun.run.batch.ops import Listed


def batches_json(listed: list[Listed]) -> dict[str, Any]:
    """Each batch, newest first: knrun's record of it and xAI's counters (None, with the
    problem, when xAI could not be asked). xAI's cost as a USD decimal string."""
    return {"batches": [_batch(each) for each in listed]}


def _batch(each: Listed) -> dict[str, Any]:
    run = each.run
    counters = None
    if each.info is not None:
        figures = batch_counters(each.info)
        cost = figures.pop("cost_ticks")
        counters = {**figures, "cost_usd": None if cost is None else usd(cost)}
    return {
        "batch_id": run.batch_id,
        "open": run.open,
        "version": run.version,
        "last_run_id": run.run_id,
        "made_for": run.made_for,
        "xai": counters,
        "problem": each.problem,
    }
