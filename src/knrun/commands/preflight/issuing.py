"""The receipt a passing checklist issues: built from what preflight measured, and recorded in
the store's runs table (the file under `.knrun/receipts/` is `receipt.py`'s)."""

from __future__ import annotations

import math
import socket
from typing import Any

from knrun import estimate as estimates
from knrun.clock import utc_now
from knrun.commands.preflight.steps import MARGIN, CanaryFigures, Step
from knrun.commands.session.lock import new_run_id
from knrun.context import Context
from knrun.pricing import ModelPrice
from knrun.receipt import Receipt
from knrun.store.base import SqlUnitStore
from knrun.store.types import RunRecord


def build(
    ctx: Context,
    steps: list[Step],
    estimate: estimates.Estimate,
    price: ModelPrice,
    balance: tuple[int | None, str],
    canary: CanaryFigures,
) -> Receipt:
    """`balance`: its ticks and where they came from."""
    job = ctx.job
    return Receipt(
        job=job.name,
        version=job.version,
        model=job.model,
        prompt_hash=job.prompt_hash,
        pricing_fingerprint=price.fingerprint(),
        created_at=utc_now(),
        run_id=new_run_id(),
        remaining_units=estimate.remaining,
        estimate_ticks=estimate.total_ticks,
        estimate_unit_ticks=estimate.unit_ticks,
        approved_ticks=approved(estimate),
        balance_ticks=balance[0],
        balance_source=balance[1],
        canary={
            "run_id": canary.run_id,
            "units": canary.units,
            "valid": canary.valid,
            "billed_ticks": canary.billed_ticks,
            "tracked_ticks": canary.tracked_ticks,
            "input_tokens_per_unit": round(canary.input_tokens),
            "output_tokens_per_unit": round(canary.output_tokens),
        },
        checks={f"{s.number} {s.title}": verdict(s) for s in steps},
        # The units the estimate counted are this store's: `go` refuses the receipt elsewhere.
        store=ctx.target.describe(),
    )


def approved(estimate: estimates.Estimate) -> int:
    """The default cap of `go`: the estimate plus 15%, plus one unit at its worst case (twice
    its estimate). The cap counts every unit it claims at that worst case, so without the last
    term a run on budget could not claim its last units: a small run stopped at its cap with
    units left (the balance step's overshoot allowance already covers them in flight)."""
    return math.ceil(estimate.total_ticks * MARGIN) + 2 * estimate.unit_ticks


async def record(store: SqlUnitStore, receipt: Receipt) -> None:
    await store.record_run(
        RunRecord(
            run_id=receipt.run_id,
            kind="preflight",
            job=receipt.job,
            version=receipt.version,
            model=receipt.model,
            prompt_hash=receipt.prompt_hash,
            host=socket.gethostname(),
            started_at=receipt.created_at,
            ended_at=receipt.created_at,
            state="finished",
            exit_code=0,
            exit_reason="receipt issued",
            estimate_ticks=receipt.estimate_ticks,
            detail=receipt.to_json(),
        )
    )


def verdict(step: Step) -> str:
    """A step as the receipt keeps it: its verdict and the codes of what it found."""
    codes = [f.code for f in step.problems] + [f"warning:{f.code}" for f in step.warnings]
    return ("PASS" if step.ok else "FAIL") + (f" ({', '.join(codes)})" if codes else "")


def batch_verdict(step: Step) -> dict[str, Any]:
    """What `go --batch` reads from the receipt."""
    canary: CanaryFigures = step.figures["canary"]
    return {
        "accepted": True,
        "run_id": canary.run_id,
        "units": canary.units,
        "billed_ticks": canary.billed_ticks,
        "tracked_ticks": canary.tracked_ticks,
        "discount_listed": str(step.figures.get("discount")),
        "discount_measured": str(round(step.figures.get("measured", 0), 4)),
    }
