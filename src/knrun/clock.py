"""Time as knrun writes it (UTC, to the second, ISO 8601 with a Z), and as a run keeps it
against a time-scaled simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def scaled_clock(time_scale: float) -> Callable[[], float]:
    """Pacing's clock in simulated seconds: against the simulator (`knrun demo`, tests,
    benchmarks) one of its seconds lasts `time_scale` real ones. 1.0 for a real run."""
    if time_scale == 1.0:
        return time.monotonic
    return lambda: time.monotonic() / time_scale


def scaled_sleep(time_scale: float) -> Callable[[float], Awaitable[None]]:
    if time_scale == 1.0:
        return asyncio.sleep
    return lambda seconds: asyncio.sleep(seconds * time_scale)
