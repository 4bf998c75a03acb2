"""The batch a run feeds or collects, as this process knows it: which of its units xAI holds and
has not answered yet, which were sent without a usable answer, and which go back to the pool."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from knrun.errors import ExitCode
from knrun.store.schema import BATCH_OWNER_PREFIX
from knrun.store.types import Unit
from knrun.xai.batch import BatchInfo

BATCH_LEASE_S = 30 * 86_400.0  # a batch's units stay leased to it as long as xAI keeps results


# The stops that cancel the batch too (its pending requests would be billed for a run that
# halted); any other stop leaves it open for the next start to collect.
CANCELS_BATCH = {ExitCode.DRIFT, ExitCode.FAILURE_RATE, ExitCode.BREAKER}


@dataclass(frozen=True)
class BatchPlan:
    """Which batch a run works on: `batch_id` to resume an open one (None: a new one, made
    only when there is something to add), and whether it adds (`submit`) or only collects."""

    batch_id: str | None = None
    submit: bool = True
    name: str = ""  # a new batch's name: unique, so a lost reply to its creation is found
    made_for: str = "go"  # go | canary: whose open batch a later run of that kind resumes


def batch_owner(batch_id: str) -> str:
    """The lease owner of a batch's units: the batch itself, not the run that added them."""
    return f"{BATCH_OWNER_PREFIX}{batch_id}"


@dataclass
class Doubt:
    """A unit whose add got no usable answer (a 5xx, a lost reply), or that an earlier run left
    leased to the batch but xAI's list did not show: it may be in the batch or not."""

    unit: Unit
    since: float  # on the run's clock
    adds: int = 1  # add calls that carried it


@dataclass
class BatchHandle:
    batch_id: str
    version: str
    created: bool = False  # by this run: every one of its results is this run's
    awaiting: dict[str, Unit] = field(default_factory=dict)  # held by xAI, no result in yet
    doubtful: dict[str, Doubt] = field(default_factory=dict)
    held: set[str] = field(default_factory=set)  # request ids xAI has (or acknowledged)
    give_back: dict[str, Unit] = field(default_factory=dict)  # leases to hand back to the pool
    info: BatchInfo | None = None  # xAI's counters, as last read with them in it
    cancel_sent: bool = False  # this process cancelled it
    cancelled: bool = False  # cancelled at xAI (by anyone): nothing more can be added
    closed: bool = False  # nothing of it awaits anything: every result is in or given back
    collected: int = 0  # results taken in by this run
    taking: int = 0  # results being taken in (judged and spooled) now

    @property
    def owner(self) -> str:
        return batch_owner(self.batch_id)

    def request_id(self, unit: Unit) -> str:
        return f"{self.version}:{unit.id}"

    @property
    def outstanding(self) -> int:
        """Requests that may yet produce a result (and a bill), or whose result is being
        taken in."""
        return len(self.awaiting) + len(self.doubtful) + self.taking

    def counters(self) -> dict[str, Any] | None:
        return None if self.info is None else batch_counters(self.info)


def batch_counters(info: BatchInfo) -> dict[str, Any]:
    return {
        "batch_id": info.batch_id,
        "requests": info.num_requests,
        "pending": info.num_pending,
        "success": info.num_success,
        "error": info.num_error,
        "cancelled": info.num_cancelled,
        "cost_ticks": info.total_cost_ticks,
        "cancelled_by_xai": info.cancelled_by_xai,
    }
