"""Serve a zero-latency xAI simulator on a loopback port in this process; print the port.
Used by benchmarks that must not count the simulator's CPU as the runner's."""

from __future__ import annotations

import sys
from decimal import Decimal

from knrun.sim.scenario import Scenario
from knrun.sim.server import _bind, _server
from knrun.sim.xai import XaiSimulator


def main() -> None:
    sim = XaiSimulator(Scenario(latency={"median_s": 0}, balance_usd=Decimal(1_000_000)))
    sock = _bind("127.0.0.1", 0)
    print(sock.getsockname()[1], flush=True)
    _server(sim).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
