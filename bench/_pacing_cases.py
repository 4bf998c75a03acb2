"""What bench/pacing.py's cases share: a case, the simulator it runs against, and the two
figures read from the simulator (steady accepted rate, share of 429s)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from knrun.sim.scenario import Faults, Scenario
from knrun.sim.xai import XaiSimulator

REAL_RPS = 100  # real requests per second the scale is chosen for: this machine keeps up


@dataclass(frozen=True)
class Case:
    name: str
    median_s: float
    units: int
    rps: float | None = None
    tpm: int | None = None
    random_429: float = 0.0
    max_concurrency: int = 3000


def simulator(case: Case, scale: float) -> XaiSimulator:
    return XaiSimulator(
        Scenario(
            latency={"median_s": case.median_s, "sigma": 0.35, "time_scale": scale},
            limits={"requests_per_s": case.rps, "tokens_per_min": case.tpm},
            faults=Faults(rate_limited=case.random_429),
            balance_usd=Decimal(1_000_000),
        )
    )


def steady_rps(times: list[float], scale: float, low: float = 0.2, high: float = 0.8) -> float:
    """Accepted requests per simulated second between the low and high fractions of them."""
    ordered = sorted(times)
    a, b = int(len(ordered) * low), int(len(ordered) * high) - 1
    return (b - a) / ((ordered[b] - ordered[a]) / scale)


def share_429(sim: XaiSimulator) -> float:
    return sim.stats.outcomes["rate_limited"] / max(sim.stats.chat_requests, 1)
