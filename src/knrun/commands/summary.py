"""The end of a run in figures: what `go`, `retry` and `batch collect` report when a run ends,
the same on a terminal, in a cron log and, with `--json`, for a script."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from knrun.commands.session.launch import Launched
from knrun.commands.status import usd
from knrun.context import Context
from knrun.run.events import EventTally
from knrun.store.types import Money

IDS_PER_REASON = 20  # unit ids listed per failure reason; the rest are counted
_FAILED_ROWS_READ = 1000  # failed units read to find those ids: bounded, whatever the table


@dataclass(frozen=True)
class StillFailing:
    """Units failed at this version after a retry: how many per reason, the first ids of
    each, and how many of them retry no longer takes (failed `max_attempts` times)."""

    counts: dict[str, int]
    unit_ids: dict[str, list[str]]
    exhausted: int
    max_attempts: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def more(self, reason: str) -> int:
        """Units of `reason` not listed by id."""
        return self.counts[reason] - len(self.unit_ids.get(reason, []))

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "exhausted": self.exhausted,
            "max_attempts": self.max_attempts,
            "by_reason": {
                reason: {
                    "count": count,
                    "unit_ids": self.unit_ids.get(reason, []),
                    "more": self.more(reason),
                }
                for reason, count in self.counts.items()
            },
        }


async def still_failing(ctx: Context, max_attempts: int) -> StillFailing:
    """What still fails at the job's version, read from the store."""
    async with ctx.open_store() as store:
        progress = await store.progress(max_attempts)
        rows = await store.exhausted(0, _FAILED_ROWS_READ) if progress.failed else []
    ids: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        reason = str(row["error"] or "").split(":", 1)[0]
        if len(ids[reason]) < IDS_PER_REASON:
            ids[reason].append(str(row["unit_id"]))
    counts = dict(sorted(progress.failed_by_reason.items(), key=lambda item: -item[1]))
    return StillFailing(counts, dict(ids), progress.retry_exhausted, max_attempts)


@dataclass(frozen=True)
class RunSummary:
    """A finished run's figures. Money in ticks; `to_json` turns it into USD strings."""

    run_id: str
    kind: str  # go | retry | collect | canary
    exit_code: int
    reason: str
    elapsed_s: float
    total: int  # units eligible when it started
    done: int
    failed: int
    failed_by_reason: dict[str, int]
    money: Money
    cap_ticks: int | None
    latency_p50_ms: int | None
    latency_p95_ms: int | None
    latency_replies: int
    requests_sent: int
    rate_limited: int
    rate_limit_rounds: int
    unwritten: int
    events: EventTally = field(default_factory=EventTally)
    batch: dict[str, Any] | None = None
    still_failing: StillFailing | None = None

    @property
    def not_processed(self) -> int:
        return max(self.total - self.done - self.failed, 0)

    @property
    def cost_per_unit_ticks(self) -> int | None:
        """What a unit done cost, failures' money included."""
        return self.money.spent_ticks // self.done if self.done else None

    @property
    def units_per_min(self) -> float | None:
        units = self.done + self.failed
        return units / self.elapsed_s * 60 if self.elapsed_s > 0 and units else None

    @property
    def tokens_per_s(self) -> float | None:
        tokens = self.money.input_tokens + self.money.output_tokens
        return tokens / self.elapsed_s if self.elapsed_s > 0 and tokens else None

    def to_json(self) -> dict[str, Any]:
        money, per_unit = self.money, self.cost_per_unit_ticks
        return {
            "run_id": self.run_id,
            "kind": self.kind,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "elapsed_s": round(self.elapsed_s, 1),
            "eligible": self.total,
            "done": self.done,
            "failed": self.failed,
            "not_processed": self.not_processed,
            "failed_by_reason": self.failed_by_reason,
            "unwritten": self.unwritten,
            "input_tokens": money.input_tokens,
            "cached_tokens": money.cached_tokens,
            "output_tokens": money.output_tokens,
            "reasoning_tokens": money.reasoning_tokens,
            "cache_share": None if money.cache_share is None else round(money.cache_share, 4),
            "spent_usd": usd(money.spent_ticks),
            "spent_max_usd": usd(money.spent_max_ticks),
            "billed_usd": usd(money.billed_ticks),
            "tracked_usd": usd(money.tracked_ticks),
            "cap_usd": None if self.cap_ticks is None else usd(self.cap_ticks),
            "cost_per_unit_usd": None if per_unit is None else usd(per_unit),
            "requests": money.requests,
            "unbilled_replies": money.unbilled_replies,
            "possibly_billed_requests": money.possible_requests,
            "possibly_billed_usd": usd(money.possible_ticks),
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "latency_replies": self.latency_replies,
            "units_per_min": _rounded(self.units_per_min),
            "tokens_per_s": _rounded(self.tokens_per_s),
            "requests_sent": self.requests_sent,
            "rate_limited": self.rate_limited,
            "rate_limit_rounds": self.rate_limit_rounds,
            "events": self.events.to_json(),
            "batch": _batch_json(self.batch),
            "still_failing": None if self.still_failing is None else self.still_failing.to_json(),
        }


def summarize(
    launched: Launched,
    *,
    still: StillFailing | None = None,
    now: float | None = None,
) -> RunSummary:
    """The summary of a run that has ended (`now`: a monotonic time, for tests)."""
    result, state = launched.result, launched.result.state
    return RunSummary(
        run_id=result.run_id,
        kind=launched.record.kind,
        exit_code=int(result.exit_code),
        reason=result.reason,
        elapsed_s=max((now if now is not None else time.monotonic()) - state.started_at, 0.0),
        total=state.total,
        done=state.done,
        failed=state.failed,
        failed_by_reason=dict(state.failed_by_reason.most_common()),
        money=state.money,
        cap_ticks=state.cap_ticks,
        latency_p50_ms=state.latency.quantile(0.5),
        latency_p95_ms=state.latency.quantile(0.95),
        latency_replies=state.latency.count,
        requests_sent=state.sent,
        rate_limited=state.rate_limited,
        rate_limit_rounds=state.rate_limit_rounds,
        unwritten=result.unwritten,
        events=state.events,
        batch=state.batch,
        still_failing=still,
    )


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _batch_json(batch: dict[str, Any] | None) -> dict[str, Any] | None:
    """xAI's counters, its cost as USD like every other sum."""
    if batch is None:
        return None
    cost = batch.get("cost_ticks")
    figures = {key: value for key, value in batch.items() if key != "cost_ticks"}
    return {**figures, "cost_usd": None if cost is None else usd(cost)}
