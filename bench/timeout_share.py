"""How many requests a chat timeout throws away (each one still billed by xAI), for the seed's
reasoning-model latency: the share of simulated latencies past each timeout.

The seed measured 38 units/min at 50 workers: by Little's law about 79 s per request in flight.
The simulator's latency is lognormal around a median; this samples it with the mean at 79 s.

    python bench/timeout_share.py [--mean 79] [--samples 200000]
"""

from __future__ import annotations

import argparse
import math

from _common import table
from knrun.sim.scenario import Latency, Scenario
from knrun.sim.xai import XaiSimulator

TIMEOUTS = (120, 300, 600, 900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mean", type=float, default=79.0)
    parser.add_argument("--samples", type=int, default=200_000)
    args = parser.parse_args()
    rows = []
    for sigma in (0.35, 0.6, 0.9):
        median = args.mean / math.exp(sigma**2 / 2)  # a lognormal's mean is median x e^(s^2/2)
        sim = XaiSimulator(Scenario(latency=Latency(median_s=median, sigma=sigma)))
        draws = [sim.latency() for _ in range(args.samples)]
        shares = ", ".join(
            f"{timeout} s: {sum(d > timeout for d in draws) / len(draws):.3%}"
            for timeout in TIMEOUTS
        )
        rows.append((f"sigma {sigma} (median {median:.0f} s)", shares))
    table(f"share of requests slower than each timeout, mean latency {args.mean:g} s", rows)


if __name__ == "__main__":
    main()
