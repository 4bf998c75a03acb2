"""The simulated Cloudflare D1 REST API: the service (routes, limits, faults) over an engine
that runs the statements in SQLite the way D1 does."""

from knrun.sim.d1.service import D1Fault, D1Simulator, D1Stats

__all__ = ["D1Fault", "D1Simulator", "D1Stats"]
