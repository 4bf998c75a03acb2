"""The run's stop signal, shared by its parts: the first reason (and its exit code) wins, the
parts that wait wake at once, and in-flight requests get a grace period before they are cut."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from knrun.errors import ExitCode
from knrun.run.events import Event, EventSink, RunState


class Control:
    def __init__(self, state: RunState, emit: EventSink, grace_s: float) -> None:
        self.state, self.emit, self.grace_s = state, emit, grace_s
        self.reason: str | None = None
        self.exit_code = ExitCode.OK
        self.stopped = asyncio.Event()
        self.workers: list[asyncio.Task[None]] = []
        self._on_stop: list[Callable[[], None]] = []

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def on_stop(self, wake: Callable[[], None]) -> None:
        """Call `wake` when the run is told to stop (a part waiting on its own event)."""
        self._on_stop.append(wake)

    def request_stop(self, reason: str, exit_code: ExitCode) -> None:
        """Stop claiming and starting requests; in-flight ones may finish for the grace period.
        The first reason wins."""
        if self.reason is not None:
            return
        self.reason, self.exit_code = reason, exit_code
        self.state.stopping = reason
        self.stopped.set()
        for wake in self._on_stop:
            wake()
        self.emit(Event("stopping", reason, {"exit_code": int(exit_code)}))
        asyncio.get_running_loop().call_later(self.grace_s, self.cancel_workers)

    def fail(self, exit_code: ExitCode) -> None:
        """A run that ended on its own, badly after all (results unwritten, units untried)."""
        if self.exit_code == ExitCode.OK:
            self.exit_code = exit_code

    def cancel_workers(self) -> None:
        for task in self.workers:
            task.cancel()

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the run is told to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopped.wait(), seconds)
