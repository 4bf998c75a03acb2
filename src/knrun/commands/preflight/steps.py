"""The checklist's rules, as data: each step's verdict, its figures, and a coded reason for every
way it can fail (or warn). Pure functions of what preflight read; the words are the display's
(`display/checklist.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from knrun import estimate as estimates
from knrun.errors import ExitCode, KnrunError
from knrun.pricecheck import check_prices
from knrun.pricing import ModelPrice, PricingTable
from knrun.xai import LiveModel

MARGIN = Decimal("1.15")  # balance must cover the estimate plus 15%
CANARY_VALID = Decimal("0.9")  # at least 9 of 10 replies must validate
CANARY_COST_TOLERANCE = Decimal("0.20")  # per-unit cost within 20% of the estimate
CANARY_BILLING_TOLERANCE = Decimal("0.02")  # tracked within 2% of billed


@dataclass(frozen=True)
class Finding:
    """One reason a step failed, or one warning: a code and the figures that go with it."""

    code: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Step:
    number: int
    title: str
    ok: bool
    figures: dict[str, Any] = field(default_factory=dict)
    problems: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class CanaryFigures:
    """What the canary run produced, as preflight judges it."""

    run_id: str
    units: int
    valid: int
    billed_ticks: int
    tracked_ticks: int  # of the replies that carried a bill, so it compares with billed_ticks
    input_tokens: float  # per valid unit, from real usage
    output_tokens: float
    exit_code: ExitCode
    reason: str
    unbilled_replies: int = 0  # replies without cost_in_usd_ticks: their price is unproven
    possibly_billed: int = 0  # requests that timed out or were dropped after sending
    pending: int = 0  # a batch canary's requests still at xAI when it stopped waiting
    batch_id: str | None = None  # a batch canary's batch


def model_current(
    model: str, reasoning_effort: str | None, live: LiveModel | None, pricing: PricingTable
) -> Step:
    figures: dict[str, Any] = {"model": model, "reasoning_effort": reasoning_effort}
    problems = []
    if live is None:
        problems.append(Finding("not_listed", {"model": model}))
    elif model in pricing.retired or live.id in pricing.retired:
        problems.append(Finding("retired", {"model": model, "path": str(pricing.path)}))
    else:
        try:
            pricing.price_for(model)
        except KnrunError as exc:
            problems.append(Finding("not_priced", {"message": str(exc)}))
        figures |= {
            "id": live.id,
            "aliases": list(live.aliases),
            "fingerprint": live.fingerprint,
            "version": live.version,
        }
    return Step(1, "model current", not problems, figures, problems)


def prices_true(
    model: str,
    price: ModelPrice,
    live: list[LiveModel],
    pricing: PricingTable,
    today: date,
    max_age_days: int,
) -> Step:
    check = check_prices(pricing, live, job_model=model, today=today, max_age_days=max_age_days)
    names = {model, price.model}  # the job may name an alias of the priced id
    mine = check.problems_for(names)
    rows = [(r.kind, r.file, r.live) for r in check.rows if r.model in names and r.live is not None]
    figures = {"rows": rows, "verified_at": price.verified_at, "path": str(pricing.path)}
    problems = [Finding("price", {"text": text}) for text in mine]
    warnings = [Finding("other_model", {"text": p}) for p in check.problems if p not in mine]
    return Step(2, "prices true", not problems, figures, problems, warnings)


def estimate_step(estimate: estimates.Estimate, price: ModelPrice) -> Step:
    return Step(3, "estimate", True, {"estimate": estimate, "price": price})


@dataclass(frozen=True)
class Overshoot:
    """The allowance past the balance: given (`--overshoot`), or so many units in flight at
    their worst case."""

    ticks: int
    in_flight: int | None = None
    worst_unit_ticks: int | None = None


def balance_step(
    total: int,
    balance: int | None,
    source: str,
    warnings: list[Finding],
    overshoot: Overshoot,
    *,
    again: bool = False,
    margin: Decimal | int = MARGIN,
) -> Step:
    need = math.ceil(total * margin) + overshoot.ticks
    figures = {
        "total": total,
        "margin": margin,
        "need": need,
        "overshoot": overshoot.ticks,
        "overshoot_in_flight": overshoot.in_flight,
        "overshoot_unit": overshoot.worst_unit_ticks,
        "balance": balance,
        "source": source,
    }
    title = "balance (re-estimated)" if again else "balance"
    number = 5 if again else 4
    if source == "missing":
        return Step(number, title, False, figures, [Finding("balance_unknown")])
    if balance is None:
        return Step(number, title, False, figures, [Finding("balance_unreadable")], warnings)
    problems = [] if balance >= need else [Finding("balance_short")]
    return Step(number, title, not problems, figures, problems, warnings)


def canary_step(
    figures: CanaryFigures,
    estimate: estimates.Estimate,
    revised: estimates.Estimate,
    timeout_s: float,
) -> Step:
    n = figures.units
    data: dict[str, Any] = {"canary": figures, "estimate": estimate, "revised": revised}
    problems = []
    if figures.exit_code != ExitCode.OK:
        problems.append(Finding("canary_stopped", {"reason": figures.reason}))
    if n == 0:
        return Step(5, "canary", False, data, problems or [Finding("canary_empty")])
    needed = math.ceil(CANARY_VALID * n)
    if figures.valid < needed:
        problems.append(
            Finding("too_few_valid", {"valid": figures.valid, "n": n, "needed": needed})
        )
    actual = Decimal(figures.billed_ticks) / n
    off = (
        abs(actual - estimate.unit_ticks) / estimate.unit_ticks
        if estimate.unit_ticks
        else Decimal(0)
    )
    data |= {"actual_unit_ticks": int(actual), "off": off}
    warnings: list[Finding] = []
    if off > CANARY_COST_TOLERANCE:
        # Dearer than estimated is the incident's shape: fail. Cheaper is money not spent (a
        # warm prompt cache, shorter replies): say so, and go on; the re-estimate uses it.
        finding = Finding("cost_off", {"actual": int(actual), "off": off})
        (problems if actual > estimate.unit_ticks else warnings).append(finding)
    gap = (
        abs(Decimal(figures.tracked_ticks - figures.billed_ticks)) / figures.billed_ticks
        if figures.billed_ticks
        else Decimal(0)
    )
    if gap > CANARY_BILLING_TOLERANCE:
        problems.append(Finding("tracked_off", {"gap": gap}))
    if figures.unbilled_replies:
        problems.append(Finding("unbilled", {"unbilled": figures.unbilled_replies, "n": n}))
    if figures.possibly_billed:
        problems.append(
            Finding(
                "possibly_billed",
                {"count": figures.possibly_billed, "n": n, "timeout_s": timeout_s},
            )
        )
    return Step(5, "canary", not problems, data, problems, warnings)


def batch_canary_step(
    figures: CanaryFigures | None, price: ModelPrice, problem: str | None
) -> Step:
    """The Batch API took the model and billed a few real units at pricing.toml's batch prices:
    the discount, measured, is what the file says (it varies by model; some models are
    refused outright). `problem`: why no batch canary could run (no batch prices)."""
    title = "batch canary"
    if figures is None:
        return Step(6, title, False, {}, [Finding("not_priced", {"message": problem or ""})])
    data: dict[str, Any] = {"canary": figures, "discount": price.batch_discount}
    problems = []
    if figures.exit_code != ExitCode.OK:
        refused = "not supported for batch" in figures.reason.lower()
        problems.append(
            Finding("batch_refused" if refused else "canary_stopped", {"reason": figures.reason})
        )
    if figures.pending:
        pending = {"batch_id": figures.batch_id, "pending": figures.pending}
        return Step(6, title, False, data, [Finding("batch_pending", pending)])
    n = figures.units
    if n == 0:
        return Step(6, title, False, data, problems or [Finding("canary_empty")])
    needed = math.ceil(CANARY_VALID * n)
    if figures.valid < needed:
        problems.append(
            Finding("too_few_valid", {"valid": figures.valid, "n": n, "needed": needed})
        )
    if figures.unbilled_replies:
        problems.append(Finding("unbilled", {"unbilled": figures.unbilled_replies, "n": n}))
    if figures.billed_ticks and figures.tracked_ticks:
        # Tracked is at pricing.toml's batch prices: billed / tracked says how far they are
        # from xAI's, and with the file's discount, what xAI's discount really is.
        listed = price.batch_discount or Decimal(0)
        ratio = Decimal(figures.billed_ticks) / figures.tracked_ticks
        measured = 1 - ratio * (1 - listed)
        data |= {"measured": measured, "gap": abs(ratio - 1)}
        if abs(ratio - 1) > CANARY_BILLING_TOLERANCE:
            problems.append(Finding("batch_price_off", {"measured": measured, "listed": listed}))
    return Step(6, title, not problems, data, problems)
