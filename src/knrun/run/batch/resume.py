"""Resuming a batch an earlier run left open: its units come back from the store (they are leased
to the batch), and xAI's request list says which it holds."""

from __future__ import annotations

from collections.abc import Callable

from knrun.run.batch.handle import BATCH_LEASE_S, BatchHandle, Doubt
from knrun.run.batch.submit import CHUNK
from knrun.run.events import Event, EventSink
from knrun.store.base import SqlUnitStore
from knrun.xai.batch import CANCELLED, BatchApi


async def take_back(
    api: BatchApi,
    store: SqlUnitStore,
    handle: BatchHandle,
    clock: Callable[[], float],
    emit: EventSink,
) -> None:
    """The units an earlier run left leased to this batch: those xAI lists wait for their
    results, those it lists as cancelled go back, and those it does not list (yet) are in
    doubt until its list has had time to catch up."""
    info = await api.get(handle.batch_id)
    handle.cancelled = info.cancelled or info.cancelled_by_xai is not None
    if info.counted:
        handle.info = info
    states = await api.request_states(handle.batch_id)
    handle.held |= set(states)
    cursor: int | None = None
    while page := await store.claim(
        CHUNK * 5, handle.owner, BATCH_LEASE_S, start=cursor, only_own=True
    ):
        cursor = page[-1].position + 1
        for unit in page:
            rid = handle.request_id(unit)
            match states.get(rid):
                case None:
                    handle.doubtful[rid] = Doubt(unit, clock())
                case state if state == CANCELLED:
                    handle.give_back[rid] = unit
                case _:
                    handle.awaiting[rid] = unit
    if handle.outstanding:
        emit(
            Event(
                "batch_resumed",
                f"{handle.outstanding:,} requests of batch {handle.batch_id} left by an "
                "earlier run: collecting them",
            )
        )
