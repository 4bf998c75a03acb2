"""What a run reports as it goes: events (for the log and the display) and live counters.

The runner only ever calls an `EventSink`; it never imports UI code. The display reads
`RunState` on its own timer, so a busy run costs one counter update per unit, not a redraw.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from knrun.run.latency import LatencyHistogram
from knrun.store.types import Money

# Events that come in bursts (a 429 round, a store outage): the first is worth a line, the
# rest a count (`rate_limited x12 (rounds 1-3)`).
FOLDED = frozenset(
    {
        "rate_limited",
        "store_error",
        "spool_error",
        "batch_wait",
        "given_back",
        "balance_unavailable",
        "possibly_billed",
        "reclaimed",
        "quarantined",
    }
)
_MESSAGES_KEPT = 1000  # messages remembered to spot a repeat: bounded, whatever the run


@dataclass(frozen=True)
class Event:
    kind: str  # run_started, unit_done, unit_failed, rate_limited, cooldown, written, ...
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


EventSink = Callable[[Event], None]


def discard(_: Event) -> None:
    """A sink for runs nobody watches (tests that only check the outcome)."""


@dataclass
class RunState:
    """Live figures of one run. Money in ticks."""

    run_id: str
    total: int  # eligible units when the run started
    concurrency: int  # units allowed in flight now (the pacing's limit)
    estimate_ticks: int | None = None  # for the whole remaining corpus, from the receipt
    cap_ticks: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    money: Money = field(default_factory=Money)  # every request billed, unbilled, possibly billed
    replies: int = 0  # units that got a reply (and so token counts)
    input_tokens: int = 0  # summed over replies
    output_tokens: int = 0
    sent: int = 0  # requests sent
    rate_limited: int = 0  # 429s seen
    rate_limit_rounds: int = 0  # bursts of them (what the breaker counts)
    rate_rps: float = 0.0  # the pacing's send rate now
    rate_limit: str = "not known yet"  # the account's limits as the pacing knows them
    peak_in_flight: int = 0
    in_flight: int = 0
    queued: int = 0
    write_backlog: int = 0  # paid results not yet in the store
    written: int = 0
    store_errors: int = 0
    given_back: int = 0  # units whose lease budget ran out before they could be sent
    runners: int = 1  # live runs sharing the store's request budget, this one included
    stopping: str | None = None  # why the run is winding down
    batch: dict[str, Any] | None = None  # a batch run's counters, as xAI last reported them
    batch_pages: int = 0  # result pages read
    batch_waits: int = 0  # Batch API calls waited out (429s, passing trouble)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # of the replies
    events: EventTally = field(default_factory=lambda: EventTally())  # notable ones, counted

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.sent if self.sent else 0.0

    @property
    def processed(self) -> int:
        return self.done + self.failed

    @property
    def billed_ticks(self) -> int:
        """The provider's own figure (cost_in_usd_ticks), summed."""
        return self.money.billed_ticks

    @property
    def tracked_ticks(self) -> int:
        """pricing.toml x usage, summed over every reply."""
        return self.money.tracked_ticks

    def units_per_minute(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.started_at
        return self.processed / elapsed * 60 if elapsed > 0 else 0.0

    def eta_seconds(self, now: float | None = None) -> float | None:
        rate = self.units_per_minute(now) / 60
        left = max(self.total - self.processed, 0)
        return left / rate if rate > 0 else None


@dataclass
class KindCount:
    """How often one kind of event came, in all and since its last line."""

    count: int = 0
    unshown: int = 0
    rounds: tuple[int, int] | None = None  # rate_limited: the breaker's rounds, lowest-highest
    unshown_rounds: tuple[int, int] | None = None

    @staticmethod
    def describe(count: int, rounds: tuple[int, int] | None, more: str = "") -> str:
        low_high = "" if rounds is None else f" (rounds {rounds[0]}-{rounds[1]})"
        if rounds is not None and rounds[0] == rounds[1]:
            low_high = f" (round {rounds[0]})"
        return f"x{count}{more}{low_high}"


def _widen(span: tuple[int, int] | None, value: int) -> tuple[int, int]:
    return (value, value) if span is None else (min(span[0], value), max(span[1], value))


class EventTally:
    """Folds repeated events into counts, for log lines a person reads: the first of a burst
    (and the first time a message is said) gets a line, the repeats a count."""

    def __init__(self) -> None:
        self.kinds: dict[str, KindCount] = {}
        self._said: set[tuple[str, str]] = set()

    def add(self, event: Event) -> bool:
        """Count a notable event; True when it deserves a line of its own now."""
        tally = self.kinds.setdefault(event.kind, KindCount())
        tally.count += 1
        rounds = event.data.get("rounds")
        if isinstance(rounds, int):
            tally.rounds = _widen(tally.rounds, rounds)
        said = (event.kind, event.message)
        repeat = (event.kind in FOLDED and tally.count > 1) or said in self._said
        if event.kind not in FOLDED and len(self._said) < _MESSAGES_KEPT:
            self._said.add(said)
        if repeat:
            tally.unshown += 1
            if isinstance(rounds, int):
                tally.unshown_rounds = _widen(tally.unshown_rounds, rounds)
        return not repeat

    def take_unshown(self) -> list[str]:
        """A line per kind with repeats since its last line ("rate_limited x11 more ..."),
        and they count as shown from now."""
        lines = []
        for kind, tally in self.kinds.items():
            if tally.unshown:
                more = tally.describe(tally.unshown, tally.unshown_rounds, " more")
                lines.append(f"{kind} {more}")
                tally.unshown, tally.unshown_rounds = 0, None
        return lines

    def repeated(self) -> list[str]:
        """Every kind that came more than once, with its count: the run summary's events."""
        return [
            f"{kind} {tally.describe(tally.count, tally.rounds)}"
            for kind, tally in self.kinds.items()
            if tally.count > 1
        ]

    def to_json(self) -> dict[str, dict[str, Any]]:
        return {
            kind: {"count": tally.count, "rounds": list(tally.rounds) if tally.rounds else None}
            for kind, tally in self.kinds.items()
        }
