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

from knrun.store.types import Money


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
