"""A finished run's summary as a person reads it: the same lines on a terminal and in a cron
log, so what a morning's mail says is what the screen said."""

from __future__ import annotations

from knrun.commands.summary import RunSummary, StillFailing
from knrun.display.console import out
from knrun.display.live import batch_figures, duration
from knrun.pricing import format_usd

LABEL_WIDTH = 15


def show_summary(summary: RunSummary) -> None:
    out.print(
        f"run {summary.run_id} ({summary.kind}) in {duration(summary.elapsed_s)}:",
        markup=False,
        highlight=False,
    )
    for label, text in summary_rows(summary):
        out.print(f"  {label:<{LABEL_WIDTH}}{text}", markup=False, highlight=False)


def show_still_failing(still: StillFailing) -> None:
    """What still fails, when there was nothing to retry (a cron log still says why)."""
    for label, text in still_failing_rows(still):
        out.print(f"  {label:<{LABEL_WIDTH}}{text}", markup=False, highlight=False)


def summary_rows(s: RunSummary) -> list[tuple[str, str]]:
    rows = [("units", _units(s)), ("tokens", _tokens(s)), ("spend", _spend(s))]
    if s.latency_p50_ms is not None and s.latency_p95_ms is not None:
        rows.append(
            (
                "latency",
                f"p50 {_seconds(s.latency_p50_ms)} · p95 {_seconds(s.latency_p95_ms)} over "
                f"{s.latency_replies:,} replies",
            )
        )
    if (per_min := s.units_per_min) is not None:
        tokens = f" · {per_s:,.0f} tokens/s" if (per_s := s.tokens_per_s) is not None else ""
        rows.append(("throughput", f"{per_min:,.0f} units/min{tokens}"))
    if s.batch is not None:
        rows.append(("batch", batch_figures(s.batch)))
    else:
        rows.append(("429s", _refusals(s)))
    if repeated := s.events.repeated():
        rows.append(("events", ", ".join(repeated)))
    if s.unwritten:
        rows.append(("unwritten", f"{s.unwritten:,} paid results wait in the spool"))
    if s.still_failing is not None:
        rows += still_failing_rows(s.still_failing)
    return rows


def still_failing_rows(still: StillFailing) -> list[tuple[str, str]]:
    """What a retry leaves failed: per reason, the first unit ids and how many more."""
    if not still.total:
        return [("still failing", "none")]
    exhausted = (
        f" ({still.exhausted:,} failed {still.max_attempts} times: retry leaves them alone)"
        if still.exhausted
        else ""
    )
    rows = [("still failing", f"{still.total:,} units{exhausted}")]
    for reason, count in still.counts.items():
        ids = ", ".join(still.unit_ids.get(reason, []))
        more = still.more(reason)
        rest = f" and {more:,} more" if more and ids else ""
        rows.append(("", f"{reason} {count:,}: {ids or 'ids not read'}{rest}"))
    return rows


def _units(s: RunSummary) -> str:
    text = f"{s.done + s.failed:,} of {s.total:,} eligible: {s.done:,} done, {s.failed:,} failed"
    if s.failed_by_reason:
        text += " (" + ", ".join(f"{k} {v:,}" for k, v in s.failed_by_reason.items()) + ")"
    if s.not_processed:
        text += f", {s.not_processed:,} not processed"
    return text


def _tokens(s: RunSummary) -> str:
    money = s.money
    cached = f"{share:.0%} cached" if (share := money.cache_share) is not None else "none cached"
    return (
        f"{money.input_tokens:,} in ({cached}) · {money.output_tokens:,} out "
        f"({money.reasoning_tokens:,} reasoning)"
    )


def _spend(s: RunSummary) -> str:
    money = s.money
    text = format_usd(money.spent_ticks)
    if s.cap_ticks:
        text += (
            f" of {format_usd(s.cap_ticks, 2)} allowed "
            f"({money.spent_max_ticks / s.cap_ticks:.0%} used at most)"
        )
    if (per_unit := s.cost_per_unit_ticks) is not None:
        text += f" · {format_usd(per_unit, 6)} per unit done"
    text += f" · billed {format_usd(money.billed_ticks)}, tracked {format_usd(money.tracked_ticks)}"
    if money.unbilled_replies:
        text += f" · {money.unbilled_replies:,} replies without a bill"
    if money.possible_requests:
        text += (
            f" · {money.possible_requests:,} possibly billed "
            f"(up to {format_usd(money.possible_ticks)})"
        )
    return text


def _refusals(s: RunSummary) -> str:
    if not s.rate_limited:
        return f"none in {s.requests_sent:,} requests"
    share = s.rate_limited / s.requests_sent if s.requests_sent else 0.0
    return (
        f"{s.rate_limited:,} of {s.requests_sent:,} requests ({share:.1%}) in "
        f"{s.rate_limit_rounds:,} rounds"
    )


def _seconds(ms: int) -> str:
    return f"{ms} ms" if ms < 1000 else f"{ms / 1000:.2f} s"
