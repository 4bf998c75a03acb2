"""A run's summary: the figures `go`, `retry` and `batch collect` end on, in words and JSON."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from rich.console import Console

from knrun.commands.session.launch import Launched
from knrun.commands.summary import StillFailing, summarize
from knrun.display import summary as shown
from knrun.errors import ExitCode
from knrun.run.config import RunResult
from knrun.run.events import Event, RunState
from knrun.store.types import Money, RunRecord

USD = 10**10


def launched(**state_fields: object) -> Launched:
    state = RunState(run_id="r1", total=100, concurrency=10, cap_ticks=2 * USD, started_at=0.0)
    state.done, state.failed = 90, 4
    state.failed_by_reason = Counter({"timeout": 3, "invalid_json": 1})
    state.money = Money(
        requests=94,
        replies=94,
        billed_ticks=USD * 9 // 10,
        billed_tracked_ticks=USD * 9 // 10,
        tracked_ticks=USD * 9 // 10,
        input_tokens=50_000,
        cached_tokens=10_000,
        output_tokens=200_000,
        reasoning_tokens=150_000,
    )
    state.sent, state.rate_limited, state.rate_limit_rounds = 110, 16, 3
    for latency in range(100, 1100, 10):
        state.latency.add(latency)
    for round_ in (1, 2, 3, 1):
        state.events.add(Event("rate_limited", "429s", {"rounds": round_}))
    for name, value in state_fields.items():
        setattr(state, name, value)
    record = RunRecord("r1", "go", "kn", "1.6", "grok-4.3", "h", "host", "2026-12-04T00:00:00Z")
    return Launched(
        RunResult("r1", ExitCode.OK, "all eligible units processed", state, 0), record, 0
    )


def test_the_json_has_every_figure_and_money_as_exact_decimal_strings() -> None:
    figures = summarize(launched(), now=60.0).to_json()
    assert figures["done"] == 90 and figures["not_processed"] == 6
    assert figures["failed_by_reason"] == {"timeout": 3, "invalid_json": 1}
    assert figures["spent_usd"] == "0.9" and figures["cap_usd"] == "2"
    assert Decimal(figures["cost_per_unit_usd"]) == Decimal("0.01")
    assert figures["cache_share"] == 0.2 and figures["reasoning_tokens"] == 150_000
    assert 590 <= figures["latency_p50_ms"] <= 650 and 1040 <= figures["latency_p95_ms"] <= 1145
    assert figures["units_per_min"] == 94.0 and figures["tokens_per_s"] == 4166.7
    assert figures["rate_limited"] == 16 and figures["rate_limit_rounds"] == 3
    assert figures["events"] == {"rate_limited": {"count": 4, "rounds": [1, 3]}}
    assert figures["still_failing"] is None and figures["batch"] is None


def test_the_words_say_the_same_and_fold_the_events() -> None:
    screen = Console(width=200, record=True)
    rows = dict(shown.summary_rows(summarize(launched(), now=60.0)))
    for label, text in rows.items():
        screen.print(label, text)
    assert rows["units"] == (
        "94 of 100 eligible: 90 done, 4 failed (timeout 3, invalid_json 1), 6 not processed"
    )
    assert rows["spend"].startswith("$0.9000 of $2.00 allowed (45% used at most) · $0.010000")
    assert rows["429s"] == "16 of 110 requests (14.5%) in 3 rounds"
    assert rows["events"] == "rate_limited x4 (rounds 1-3)"


def test_a_batch_run_shows_the_batch_counters_with_xais_cost_in_usd() -> None:
    batch = {
        "batch_id": "b1",
        "requests": 9,
        "pending": 0,
        "success": 9,
        "error": 0,
        "cancelled": 0,
        "cost_ticks": USD // 4,
        "cancelled_by_xai": False,
    }
    summary = summarize(launched(batch=batch), now=60.0)
    rows = dict(shown.summary_rows(summary))
    assert "429s" not in rows and rows["batch"].startswith("batch b1: 9 requests")
    assert summary.to_json()["batch"]["cost_usd"] == "0.25"


def test_what_still_fails_lists_the_first_ids_and_counts_the_rest() -> None:
    still = StillFailing(
        counts={"timeout": 25, "invalid_json": 2},
        unit_ids={"timeout": [str(n) for n in range(20)], "invalid_json": ["7", "9"]},
        exhausted=4,
        max_attempts=3,
    )
    rows = shown.still_failing_rows(still)
    assert rows[0] == ("still failing", "27 units (4 failed 3 times: retry leaves them alone)")
    assert rows[1][1].startswith("timeout 25: 0, 1, 2") and rows[1][1].endswith("and 5 more")
    assert rows[2][1] == "invalid_json 2: 7, 9"
    assert still.to_json()["by_reason"]["timeout"]["more"] == 5
