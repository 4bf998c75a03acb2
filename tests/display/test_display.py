"""What a person sees of a run: the live panel and the plain progress line show the figures."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
from rich.console import Console

from knrun.commands.session import awake
from knrun.display.live import panel, progress_line
from knrun.run.events import RunState
from knrun.store.types import Money

USD = 10**10


def state() -> RunState:
    s = RunState(run_id="r1", total=1000, concurrency=50, estimate_ticks=2 * USD, cap_ticks=3 * USD)
    s.done, s.failed = 400, 8
    s.failed_by_reason = Counter({"invalid_json": 6, "truncated": 2})
    s.money = Money(
        requests=408,
        replies=408,
        billed_ticks=USD * 85 // 100,
        billed_tracked_ticks=USD * 84 // 100,
        tracked_ticks=USD * 84 // 100,
    )
    s.rate_limited, s.rate_limit_rounds, s.sent = 3, 1, 411
    s.rate_rps, s.rate_limit, s.peak_in_flight = 12.5, "30 requests/s (header)", 64
    s.in_flight, s.queued, s.write_backlog, s.written = 50, 20, 40, 368
    s.started_at -= 60  # a minute in
    return s


def test_the_plain_line_carries_progress_rate_spend_and_pipeline() -> None:
    line = progress_line(state())
    assert line.startswith("408/1000 units (400 ok, 8 failed) · 408/min · eta 1m")
    assert "spent $0.8500 / cap $3.00 · " in line
    assert (
        "pace 12.5/s (limit 30 requests/s (header)) · in flight 50/50 · "
        "429s 3 (0.7%) in 1 rounds · write backlog 40"
    ) in line


def test_money_the_provider_never_billed_is_shown_apart() -> None:
    s = state()
    s.money.unbilled_replies, s.money.unbilled_tracked_ticks = 12, USD // 100
    s.money.possible_requests, s.money.possible_ticks, s.money.expected_ticks = 3, USD // 10, 1000
    line = progress_line(s)
    assert (
        "spent $0.8600 / cap $3.00 (12 replies without a bill ($0.0100 at pricing.toml); "
        "3 possibly billed (up to $0.1000))"
    ) in line
    console = Console(width=160, record=True)
    console.print(panel(s))
    text = console.export_text()
    assert "unverified" in text and "3 possibly billed" in text


def test_the_panel_shows_every_figure_an_operator_watches() -> None:
    console = Console(width=120, record=True)
    s = state()
    s.stopping = "spend cap reached"
    console.print(panel(s))
    text = console.export_text()
    for expected in (
        "408 / 1,000",
        "(400 ok, 8 failed)",
        "$0.8500 billed",
        "$0.8400 tracked",
        "estimate $2.00",
        "cap $3.00",
        "invalid_json 6, truncated 2",
        "20 queued · 50 in flight · 40 to write · 368 written",
        "12.5 requests/s · limit 30 requests/s (header) · in flight 50 of 50 allowed (peak 64)",
        "3 of 411 requests (0.7%) in 1 rounds",
        "stopping: spend cap reached",
    ):
        assert expected in text


def test_keep_awake_runs_caffeinate_on_our_pid_on_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(awake.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "Popen", lambda args: started.append(args) or "process")
    assert awake.keep_awake() == "process"
    assert started == [["caffeinate", "-i", "-w", str(__import__("os").getpid())]]
    monkeypatch.setattr(sys, "platform", "linux")
    assert awake.keep_awake() is None


def test_store_trouble_shows_once_there_is_some() -> None:
    s = state()
    assert "store errors" not in progress_line(s)
    s.store_errors = 4
    assert progress_line(s).endswith("write backlog 40 · store errors 4")
    console = Console(width=140, record=True)
    console.print(panel(s))
    assert "4 store errors" in console.export_text()


def test_off_a_terminal_a_burst_is_one_line_then_a_count_every_ten_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from io import StringIO

    from knrun.display import console, live
    from knrun.run.events import Event

    log = StringIO()
    monkeypatch.setattr(console.out, "_file", log)
    now = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    display = live.RunDisplay(live=False)
    display.attach(state())
    for round_ in (1, 2, 2, 3, 1):
        display(Event("rate_limited", f"429s (round {round_})", {"rounds": round_}))
    display(Event("unit_done"))
    assert log.getvalue().count("rate_limited") == 1
    now[0] += live.PLAIN_EVERY_S
    display(Event("unit_done"))
    lines = log.getvalue().splitlines()
    assert lines[-1].endswith("rate_limited x4 more (rounds 1-3)")
    assert "408/1000 units" in lines[-2]  # with the progress line
    display.close()
    assert log.getvalue().splitlines() == lines  # off a terminal, close adds nothing
