"""`knrun preflight --json`: the checklist's outcome as one object for a script."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from knrun.commands.preflight.checklist import Outcome
from knrun.commands.preflight.steps import Step
from knrun.commands.status import usd
from knrun.context import STATE_DIR, Context
from knrun.receipt import receipt_path

# A step in words: its one-line summary, its details and its warnings (the display's).
Describe = Callable[[Step], tuple[str, list[str], list[str]]]


def preflight_json(ctx: Context, outcome: Outcome, describe: Describe) -> dict[str, Any]:
    """Every step with its verdict and words, the estimate, and the receipt when one was
    written. Money as USD decimal strings, as `status --json` has it."""
    job, estimate, receipt = ctx.job, outcome.estimate, outcome.receipt
    failed = outcome.failed
    return {
        "job": job.name,
        "version": job.version,
        "model": job.model,
        "store": ctx.target.describe(),
        "ok": failed is None,
        "exit_code": int(outcome.exit_code),
        "failed_step": None if failed is None else failed.number,
        "steps": [_step(step, describe) for step in outcome.steps],
        "estimate": None
        if estimate is None
        else {
            "remaining": estimate.remaining,
            "in_batches": estimate.in_batches,
            "input_tokens_per_unit": round(estimate.input_tokens),
            "output_tokens_per_unit": round(estimate.output_tokens),
            "unit_usd": usd(estimate.unit_ticks),
            "total_usd": usd(estimate.total_ticks),
            "batch_total_usd": None
            if estimate.batch_total_ticks is None
            else usd(estimate.batch_total_ticks),
        },
        "receipt": None
        if receipt is None
        else {
            "path": str(receipt_path(STATE_DIR, job)),
            "created_at": receipt.created_at,
            "remaining_units": receipt.remaining_units,
            "approved_usd": usd(receipt.approved_ticks),
            "estimate_usd": usd(receipt.estimate_ticks),
            "balance_usd": None if receipt.balance_ticks is None else usd(receipt.balance_ticks),
            "balance_source": receipt.balance_source,
            "max_concurrency": receipt.max_concurrency,
            "batch": bool(receipt.batch),
        },
    }


def _step(step: Step, describe: Describe) -> dict[str, Any]:
    summary, details, warnings = describe(step)
    return {
        "number": step.number,
        "title": step.title,
        "ok": step.ok,
        "summary": summary,
        "details": details,
        "warnings": warnings,
        "problems": [finding.code for finding in step.problems],
    }
