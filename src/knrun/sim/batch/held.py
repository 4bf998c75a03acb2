"""What the simulated Batch API holds, and what each kind of read sees of it.

xAI's counters (`GET /batches/{id}`), its results list and its request list are separate reads,
and the public record promises no consistency between them. Here a request's end reaches each of
them at its own moment: the counters, the results list and the request list each learn of it up
to `view_lag_s` late, independently, so any two reads can disagree either way for a while. A
newly added request shows in the request list only `ids_lag_s` after it was added. Results are
listed in the order the scenario names (`completion`, `newest_first`, or `shuffled`: by a hash,
so a new result lands anywhere among the old ones and shifts every page after it)."""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

PENDING, SUCCEEDED, FAILED, CANCELLED = "pending", "succeeded", "failed", "cancelled"
STATES = (PENDING, SUCCEEDED, FAILED, CANCELLED)


@dataclass
class BatchStats:
    created: int = 0
    add_calls: int = 0
    added: int = 0  # requests accepted, duplicates included
    duplicates: int = 0  # ids added again with the same content: processed and billed again
    processed: int = 0
    billed_ticks: int = 0
    live_ticks: int = 0  # what the same requests would have cost live
    errors: int = 0
    credit_errors: int = 0  # requests refused for credit while processing (not billed)
    cancel_calls: int = 0
    get_calls: int = 0
    result_pages: int = 0
    result_bytes: int = 0  # bytes of results pages served
    id_pages: int = 0
    rate_limited: int = 0  # 429s answered to batch calls
    # After the first cancel of a batch, what still ran (the cancel had not reached it yet).
    processed_after_cancel: int = 0
    billed_after_cancel_ticks: int = 0


@dataclass
class BatchRequest:
    request_id: str
    body: dict[str, Any]
    digest: str
    added_at: float
    due: float  # when xAI processes it
    listed_at: float  # in the request list from then
    seq: int = 0
    state: str = PENDING  # the truth
    ended_at: float = math.inf
    counted_at: float = math.inf  # the counters show its end from then
    shown_at: float = math.inf  # its result is in the results list from then
    stated_at: float = math.inf  # the request list shows its end state from then
    result: dict[str, Any] | None = None
    cost_ticks: int = 0

    def state_seen(self, at: float, now: float) -> str:
        return self.state if at <= now else PENDING


@dataclass
class Batch:
    batch_id: str
    name: str
    created: float
    order: str  # completion | newest_first | shuffled
    requests: dict[str, list[BatchRequest]] = field(default_factory=dict)
    added: list[BatchRequest] = field(default_factory=list)  # in the order added
    queue: list[tuple[float, int, BatchRequest]] = field(default_factory=list)  # by due time
    cost_ticks: int = 0
    finished: int = 0  # requests that ran (succeeded or failed)
    cancel_requested: float | None = None
    cancel_effective: float | None = None  # the cancel has reached every request from then
    cancelled_by_xai: str | None = None
    # Results listed so far, in the listing's order, and those about to be.
    _listed: list[tuple[Any, int, BatchRequest]] = field(default_factory=list)
    _to_list: list[tuple[float, int, BatchRequest]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def hold(self, entry: BatchRequest) -> bool:
        """Add a request; True when its id was already held (a duplicate)."""
        entry.seq = next(self._seq)
        held = self.requests.setdefault(entry.request_id, [])
        duplicate = bool(held)
        held.append(entry)
        self.added.append(entry)
        heapq.heappush(self.queue, (entry.due, entry.seq, entry))
        return duplicate

    def ended(self, entry: BatchRequest) -> None:
        """A request's result exists: it is listed from its `shown_at`."""
        heapq.heappush(self._to_list, (entry.shown_at, entry.seq, entry))

    def count(self, state: str) -> int:
        """The truth, for tests."""
        return sum(r.state == state for r in self.added)

    # -- the three reads --------------------------------------------------------------------------

    def counters(self, now: float) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for entry in self.added:
            counts[entry.state_seen(entry.counted_at, now)] += 1
        return counts

    def results(self, now: float) -> list[dict[str, Any]]:
        while self._to_list and self._to_list[0][0] <= now:
            _, _, entry = heapq.heappop(self._to_list)
            bisect.insort(self._listed, (self._key(entry), entry.seq, entry))
        return [entry.result for _, _, entry in self._listed if entry.result is not None]

    def request_list(self, now: float) -> list[dict[str, Any]]:
        return [
            {
                "batch_request_id": r.request_id,
                "endpoint": "/v1/chat/completions",
                "model": r.body.get("model"),
                "state": r.state_seen(r.stated_at, now),
            }
            for r in self.added
            if r.listed_at <= now
        ]

    def _key(self, entry: BatchRequest) -> Any:
        if self.order == "newest_first":
            return (-entry.shown_at, -entry.seq)
        if self.order == "shuffled":
            return hashlib.sha256(f"{self.batch_id}:{entry.seq}".encode()).hexdigest()
        return (entry.shown_at, entry.seq)
