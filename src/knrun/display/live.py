"""A run as a person sees it: a live panel on a terminal, plain progress lines otherwise (cron
logs). Reads `RunState` on its own timer and listens to the runner's events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from knrun.display.console import out
from knrun.pricing import format_usd
from knrun.run.events import Event, EventTally, RunState

# Events worth a line of their own (unit events are summarised instead; the end of the run
# is the summary's and the last line's).
NOTABLE = {
    "run_started",
    "replayed",
    "released",
    "reclaimed",
    "dead_runs",
    "possibly_billed",
    "given_back",
    "quarantined",
    "lost",
    "leases_kept",
    "spool_error",
    "rate_limited",
    "open_files",
    "stopping",
    "store_error",
    "drift_check",
    "balance_unavailable",
    "batch_created",
    "batch_attached",
    "batch_resumed",
    "batch_cancelled",
    "batch_cancel_failed",
    "batch_add_unknown",
    "batch_add_again",
    "batch_progress",
    "batch_wait",
    "batch_left_open",
    "cache_warning",
    "in_flight_settled",
}
PLAIN_EVERY_S = 10.0


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def money_note(state: RunState) -> str:
    """What the spent figure holds beyond the provider's bills, if anything."""
    money = state.money
    parts = []
    if money.unbilled_replies:
        parts.append(
            f"{money.unbilled_replies} replies without a bill "
            f"({format_usd(money.unbilled_tracked_ticks)} at pricing.toml)"
        )
    if money.possible_requests:
        parts.append(
            f"{money.possible_requests} possibly billed (up to {format_usd(money.possible_ticks)})"
        )
    return "; ".join(parts)


def batch_figures(batch: dict[str, Any]) -> str:
    """A batch run's counters as xAI reports them."""
    cost = batch.get("cost_ticks")
    return (
        f"batch {batch['batch_id']}: {batch['requests']:,} requests, {batch['pending']:,} "
        f"pending, {batch['success']:,} done, {batch['error']:,} errors, "
        f"{batch['cancelled']:,} cancelled"
        + (f", xAI's cost {format_usd(cost)}" if cost is not None else "")
    )


def tokens_line(state: RunState) -> str:
    """What the replies bought: prompt tokens and the prompt cache's share, output and its
    reasoning part."""
    money = state.money
    cached = f"{money.cache_share:.0%} cached" if money.cache_share is not None else "none yet"
    return (
        f"{money.input_tokens:,} in ({cached}) · {money.output_tokens:,} out "
        f"({money.reasoning_tokens:,} reasoning)"
    )


def pace(state: RunState) -> str:
    """How fast it sends and why: the pacing's rate, the limit it knows, units in flight
    against what it allows, and the share of requests answered 429 (for a batch run, the
    batch's counters: the Batch API has no rate limits to pace)."""
    if state.batch is not None:
        return f"{batch_figures(state.batch)} · awaiting {state.in_flight:,}"
    return (
        f"pace {state.rate_rps:.1f}/s (limit {state.rate_limit}) · "
        f"in flight {state.in_flight}/{state.concurrency} · "
        f"429s {state.rate_limited} ({state.share_429:.1%}) in {state.rate_limit_rounds} rounds"
    )


def progress_line(state: RunState) -> str:
    cap = f" / cap {format_usd(state.cap_ticks, 2)}" if state.cap_ticks else ""
    note = money_note(state)
    return (
        f"{state.processed}/{state.total} units ({state.done} ok, {state.failed} failed) · "
        f"{state.units_per_minute():.0f}/min · eta {duration(state.eta_seconds())} · "
        f"spent {format_usd(state.money.spent_ticks)}{cap}"
        + (f" ({note})" if note else "")
        + (f" · cache {share:.0%}" if (share := state.money.cache_share) is not None else "")
        + f" · {pace(state)} · write backlog {state.write_backlog}"
        + (f" · store errors {state.store_errors}" if state.store_errors else "")
    )


def panel(state: RunState) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    share = state.processed / state.total if state.total else 1.0
    bar_width = 30
    filled = int(share * bar_width)
    grid.add_row("progress", f"[green]{'█' * filled}[/]{'░' * (bar_width - filled)} {share:.0%}")
    grid.add_row(
        "units",
        f"{state.processed:,} / {state.total:,}  ({state.done:,} ok, {state.failed:,} failed)",
    )
    grid.add_row(
        "rate", f"{state.units_per_minute():.0f} units/min · eta {duration(state.eta_seconds())}"
    )
    estimate = format_usd(state.estimate_ticks, 2) if state.estimate_ticks else "—"
    cap = format_usd(state.cap_ticks, 2) if state.cap_ticks else "none"
    grid.add_row(
        "spent",
        f"{format_usd(state.billed_ticks)} billed · {format_usd(state.tracked_ticks)} "
        f"tracked · estimate {estimate} · cap {cap}",
    )
    if note := money_note(state):
        grid.add_row("unverified", f"[yellow]{note}[/]")
    grid.add_row("tokens", tokens_line(state))
    reasons = ", ".join(f"{k} {v}" for k, v in state.failed_by_reason.most_common(4)) or "none"
    grid.add_row("failures", reasons)
    if state.batch is not None:
        grid.add_row("batch", batch_figures(state.batch))
    else:
        _pace_rows(grid, state)
    grid.add_row(
        "pipeline",
        f"{state.queued} queued · {state.in_flight} in flight · "
        f"{state.write_backlog} to write · {state.written:,} written"
        + (f" · [yellow]{state.store_errors} store errors[/]" if state.store_errors else ""),
    )
    parts: list[Table | Text] = [grid]
    if state.stopping:
        # Wrapped, whatever the console's soft wrap: the reason is the line that matters.
        parts.append(
            Text(f"stopping: {state.stopping}", style="bold yellow", no_wrap=False, overflow="fold")
        )
    return Panel(Group(*parts), title=f"knrun run {state.run_id}", title_align="left")


class RunDisplay:
    """An event sink that also renders the run. Attach the state once the runner exists.

    Repeated events are folded (`EventTally`): the first of a burst gets a line, the rest a
    count every PLAIN_EVERY_S, and the run summary has the totals."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.state: RunState | None = None
        self.tally = EventTally()
        self._live: Live | None = None
        self._last_line = 0.0

    def attach(self, state: RunState) -> None:
        self.state = state
        state.events = self.tally
        self._last_line = time.monotonic()  # the first progress line once there is progress
        if self.live:
            self._live = Live(
                get_renderable=lambda: panel(state),
                console=out,
                refresh_per_second=4,
                transient=False,
            )
            self._live.start()

    def __call__(self, event: Event) -> None:
        quiet = event.kind == "drift_check" and event.message == "ok"
        if event.kind in NOTABLE and not quiet and self.tally.add(event):
            self._line(f"{event.kind}: {_said(event)}")
        now = time.monotonic()
        if self.state is not None and now - self._last_line >= PLAIN_EVERY_S:
            self._last_line = now
            if not self.live:
                self._line(progress_line(self.state))
            for folded in self.tally.take_unshown():
                self._line(folded)

    def _line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        target = self._live.console if self._live is not None else out
        target.print(f"{stamp} {text}", markup=False, highlight=False)

    def close(self) -> None:
        """The panel's last frame stays on screen, drawn once (stopping the Live draws it);
        the run's summary follows it, on a terminal or not."""
        if self._live is not None:
            self._live.stop()
            self._live = None


def _said(event: Event) -> str:
    """A stop's line names its cause ("credit exhausted"); the whole reason ends the run, so
    a long message (xAI's credit text) is said once."""
    if event.kind == "stopping" and ": " in event.message:
        return event.message.split(": ", 1)[0] + " (the full reason ends the run)"
    return event.message


@contextmanager
def run_display(*, live: bool) -> Iterator[RunDisplay]:
    display = RunDisplay(live=live)
    try:
        yield display
    finally:
        display.close()


def _pace_rows(grid: Table, state: RunState) -> None:
    grid.add_row(
        "pace",
        f"{state.rate_rps:.1f} requests/s · limit {state.rate_limit} · "
        f"in flight {state.in_flight:,} of {state.concurrency:,} allowed "
        f"(peak {state.peak_in_flight:,})",
    )
    refused = f"{state.share_429:.1%}"
    refused = f"[yellow]{refused}[/]" if state.share_429 > 0.05 else refused
    grid.add_row(
        "429s",
        f"{state.rate_limited:,} of {state.sent:,} requests ({refused}) in "
        f"{state.rate_limit_rounds} rounds",
    )
