"""How close does knrun come to the Little's-law ceiling, and what does it ask of the store?

50 workers, xAI latency lognormal around 5 s, D1 at 150 ms a request behind a 3 req/s limiter,
all time-scaled. Efficiency = achieved units/s / (workers / measured mean latency).
Targets: efficiency >= 0.97; store requests per unit <= 0.1; peak store rate < 4/s.

    python bench/efficiency.py [--units 5000] [--scale 0.01]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _common import run_scaled, table, units_db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=5500)
    # 0.05: 20x faster than life, slow enough that this one process (runner and simulators)
    # is never short of CPU, which would measure the benchmark instead of the runner.
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "units.sqlite"
        eligible = units_db(db, args.units)
        m = asyncio.run(run_scaled(db, eligible, scale=args.scale, concurrency=args.concurrency))
    assert m.d1 is not None and m.result.exit_code == 0, m.result.reason
    scale = args.scale
    mean = m.mean_latency_s(scale)
    bound = args.concurrency / mean
    achieved = m.units / m.wall_s
    steady = m.steady_rate()
    requests = m.d1.stats.requests
    peak_1s = m.d1.stats.peak_in_window(1.0 * scale)
    peak_5min = m.d1.stats.peak_in_window(300 * scale)
    table(
        f"efficiency: {m.units} units, {args.concurrency} workers, time scale {scale}",
        [
            ("mean xAI latency (real s)", f"{mean / scale:.2f}"),
            (
                "Little's-law bound",
                f"{bound * scale:.2f} units/s real ({bound * scale * 60:.0f}/min)",
            ),
            ("achieved", f"{achieved * scale:.2f} units/s real ({achieved * scale * 60:.0f}/min)"),
            (
                "efficiency, whole run",
                f"{achieved / bound:.3f}   (incl. ramp-up and the last wave)",
            ),
            (
                "efficiency, steady state",
                f"{steady / bound:.3f}   (middle 80% of units; target >= 0.97)",
            ),
            ("store requests", f"{requests} ({m.d1.stats.write_requests} writes incl. claims)"),
            ("store requests per unit", f"{requests / m.units:.3f}   (target <= 0.1)"),
            ("peak store rate", f"{peak_1s} requests in any real second   (must stay < 4)"),
            ("peak in any 5 minutes", f"{peak_5min}   (Cloudflare blocks past 1200)"),
            (
                "runner CPU",
                f"{m.cpu_s:.2f} s incl. simulators, {m.cpu_s / m.units * 1e3:.2f} ms/unit",
            ),
        ],
    )


if __name__ == "__main__":
    main()
