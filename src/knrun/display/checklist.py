"""Preflight on screen: each step's verdict in words, one line per step as it completes, then
the cost comparison. The rules live in `preflight/steps.py`; this module only says them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from knrun.commands.preflight.steps import CanaryFigures, Finding, Step
from knrun.display.console import out
from knrun.estimate import Estimate
from knrun.pricing import format_price, format_usd

TITLE_WIDTH = 24


@dataclass
class Words:
    summary: str
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def show_step(step: Step) -> None:
    words = describe(step)
    verdict = "[bold green]PASS[/]" if step.ok else "[bold red]FAIL[/]"
    title = f"{step.number} {step.title}".ljust(TITLE_WIDTH)
    out.print(f"  {title} {verdict}  ", end="")
    out.print(words.summary, markup=False)
    indent = " " * (TITLE_WIDTH + 9)
    for line in words.details:
        out.print(f"{indent}{line}", markup=False, style="dim")
    for line in words.warnings:
        out.print(f"{indent}warning: {line}", markup=False, style="yellow")


def step_words(step: Step) -> tuple[str, list[str], list[str]]:
    """A step in words, for `preflight --json`: its summary, details and warnings."""
    words = describe(step)
    return words.summary, words.details, words.warnings


def describe(step: Step) -> Words:
    render = _RENDERERS.get(step.title.split(" (")[0], _plain)
    words = render(step)
    words.warnings += [_warning(w) for w in step.warnings]
    return words


def _plain(step: Step) -> Words:
    return Words("; ".join(_problem(p) for p in step.problems) or "ok")


def _model_current(step: Step) -> Words:
    if step.problems:
        return _plain(step)
    f = step.figures
    aliases = ", ".join(f["aliases"]) or "none"
    effort = f["reasoning_effort"] or "not sent (the model's default)"
    return Words(
        f"{f['id']} (aliases: {aliases}; "
        f"fingerprint {f['fingerprint'] or '-'}; version {f['version'] or '-'})",
        details=[f"reasoning_effort: {effort}"],
    )


def _prices_true(step: Step) -> Words:
    f = step.figures
    if step.problems:
        fix = f"fix: read the live prices, then `knrun pricing sync --pricing {f['path']}`"
        return Words("; ".join(_problem(p) for p in step.problems), details=[fix])
    rows = ", ".join(
        f"{kind} ${format_price(file)} (live ${format_price(live)})"
        for kind, file, live in f["rows"]
    )
    return Words(f"{rows} per 1M; verified {f['verified_at']}")


def _estimate(step: Step) -> Words:
    estimate: Estimate = step.figures["estimate"]
    price = step.figures["price"]
    in_batches = (
        f"; {estimate.in_batches:,} more are in open batches at xAI (`knrun batch collect` "
        "writes their results)"
        if estimate.in_batches
        else ""
    )
    if estimate.remaining == 0:
        return Words(f"0 units remain at this version: nothing to run{in_batches}")
    batch = (
        f"; batch {format_usd(estimate.batch_total_ticks, 2)}"
        if estimate.batch_total_ticks is not None
        else ""
    )
    sampled = (
        f"all {estimate.sampled:,}"
        if estimate.sampled >= estimate.remaining
        else f"a sample of {estimate.sampled:,}"
    )
    return Words(
        f"{estimate.remaining:,} units x {format_usd(estimate.unit_ticks, 6)} = "
        f"{format_usd(estimate.total_ticks, 2)} standard{batch}{in_batches}",
        details=[
            f"input {estimate.input_tokens:,.0f} tokens/unit (rendered {sampled} prompts); "
            f"output {estimate.output_tokens:,.0f} tokens/unit ({estimate.output_source})",
            f"totals: {estimate.total_input_tokens:,} input + {estimate.total_output_tokens:,} "
            f"output tokens at ${price.input}/${price.output} per 1M",
        ],
    )


def _balance(step: Step) -> Words:
    f = step.figures
    total, margin = f["total"], f["margin"]
    what = (
        f"estimate {format_usd(total, 2)} x {margin}"
        if margin != 1
        else f"spend cap {format_usd(total, 2)}"
    )
    rule = (
        f"needs {format_usd(f['need'], 2)} = {what} + "
        f"{format_usd(f['overshoot'], 2)} overshoot allowance"
    )
    if f.get("overshoot_in_flight"):
        rule += (
            f" ({f['overshoot_in_flight']:,} in flight x {format_usd(f['overshoot_unit'], 4)} "
            "worst case)"
        )
    codes = {p.code for p in step.problems}
    if "balance_unknown" in codes:
        return Words(
            "unknown: set XAI_MANAGEMENT_KEY (to read it) or "
            "pass --balance USD (recorded as attested)",
            details=[rule],
        )
    if "balance_unreadable" in codes:
        return Words("could not be read", details=[rule])
    word = "does NOT cover" if "balance_short" in codes else "covers"
    return Words(f"{format_usd(f['balance'], 2)} ({f['source']}) {word} the run: {rule}")


def _canary(step: Step) -> Words:
    figures: CanaryFigures | None = step.figures.get("canary")
    if figures is None or "actual_unit_ticks" not in step.figures:
        return _plain(step)
    estimate: Estimate = step.figures["estimate"]
    revised: Estimate = step.figures["revised"]
    summary = (
        f"{figures.valid}/{figures.units} valid; "
        f"{format_usd(step.figures['actual_unit_ticks'], 6)}/unit vs estimate "
        f"{format_usd(estimate.unit_ticks, 6)}; tracked {format_usd(figures.tracked_ticks, 6)} "
        f"vs billed {format_usd(figures.billed_ticks, 6)}"
    )
    details = [
        f"re-estimate ({revised.output_source}): {revised.input_tokens:,.0f} in + "
        f"{revised.output_tokens:,.0f} out tokens/unit -> {revised.remaining:,} units x "
        f"{format_usd(revised.unit_ticks, 6)} = {format_usd(revised.total_ticks, 2)}"
    ]
    if step.problems:
        problems = "; ".join(_problem(p, step.figures) for p in step.problems)
        return Words(problems, details=[summary, *details])
    return Words(summary, details=details)


def _receipt(step: Step) -> Words:
    f = step.figures
    return Words(
        f"{f['path']}: valid 24 h; approved spend "
        f"{format_usd(f['approved'], 2)} for {f['units']:,} units"
    )


def _problem(finding: Finding, step_figures: dict[str, Any] | None = None) -> str:
    f = finding.figures
    canary: CanaryFigures | None = (step_figures or {}).get("canary")
    estimate: Estimate | None = (step_figures or {}).get("estimate")
    match finding.code:
        case "not_listed":
            return (
                f"{f['model']} is not on the live model list: "
                "retired, misspelt, or this key cannot use it. Do not run it."
            )
        case "retired":
            return f"{f['model']} is listed as retired in {f['path']}"
        case "not_priced":
            return str(f["message"])
        case "price":
            return str(f["text"])
        case "canary_stopped":
            return f"the canary run stopped: {f['reason']}"
        case "batch_refused":
            return f"the Batch API refused the model: {f['reason']}; run it live"
        case "batch_price_off":
            return (
                f"xAI billed the batch at {f['measured']:.1%} off, pricing.toml says "
                f"{f['listed']:.1%}: fix batch_input and batch_output"
            )
        case "batch_pending":
            return (
                f"{f['pending']} requests of the canary's batch {f['batch_id']} are still "
                "pending at xAI (the Batch API promises results within 24 h): run `knrun "
                "preflight --batch` again later; it waits for this same batch and buys nothing "
                "twice"
            )
        case "canary_empty":
            return "no unit ran"
        case "too_few_valid":
            return f"{f['valid']}/{f['n']} replies valid (needs {f['needed']})"
        case "cost_off" if estimate is not None:
            return (
                f"cost per unit {format_usd(f['actual'], 6)} vs estimate "
                f"{format_usd(estimate.unit_ticks, 6)} ({f['off']:.0%} off; the next preflight "
                "estimates from these units)"
            )
        case "tracked_off" if canary is not None:
            return (
                f"tracked {format_usd(canary.tracked_ticks, 6)} vs billed "
                f"{format_usd(canary.billed_ticks, 6)} ({f['gap']:.1%} apart): "
                "pricing.toml is wrong"
            )
        case "unbilled":
            return (
                f"{f['unbilled']} of {f['n']} replies carried no cost_in_usd_ticks: what "
                "xAI bills cannot be compared with pricing.toml (a proxy dropping fields?)"
            )
        case "possibly_billed":
            return (
                f"{f['count']} of {f['n']} requests timed out or were dropped after "
                f"sending (timeout_s = {f['timeout_s']:g}): they may have been billed unseen"
            )
    return finding.code.replace("_", " ")


def _warning(finding: Finding) -> str:
    f = finding.figures
    match finding.code:
        case "cost_off":
            return (
                f"cost per unit {format_usd(f['actual'], 6)}, {f['off']:.0%} under the "
                "estimate: the re-estimate below uses what the canary really cost"
            )
        case "other_model":
            return f"other model: {f['text']}"
        case "management_api":
            return f"management API: {f['error']}"
        case "limit_unknown":
            return f"spending limit unknown ({f['error']})"
        case "spending_limit":
            return (
                f"the team's monthly spending limit ({format_usd(f['limit'], 2)}) lets spend go on "
                "past prepaid credit; knrun's spend cap still stops the run"
            )
    return finding.code.replace("_", " ")


def _batch_canary(step: Step) -> Words:
    if step.problems:
        return _plain(step)
    canary = step.figures["canary"]
    return Words(
        f"{canary.valid}/{canary.units} valid through the Batch API; billed "
        f"{format_usd(canary.billed_ticks, 6)}, tracked at batch prices "
        f"{format_usd(canary.tracked_ticks, 6)}: {step.figures['measured']:.1%} off the live "
        f"price (pricing.toml: {step.figures['discount']:.1%})"
    )


_RENDERERS: dict[str, Callable[[Step], Words]] = {
    "batch canary": _batch_canary,
    "model current": _model_current,
    "prices true": _prices_true,
    "estimate": _estimate,
    "balance": _balance,
    "canary": _canary,
    "receipt": _receipt,
}


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
