"""knrun against the OpenAI cookbook's api_request_parallel_processor.py: throughput and client
CPU per unit, side by side, against the same xAI simulator.

Both clients send the same chat bodies (the example job kn-1.6 rendered for the same synthetic
units, with knrun's JSON-Schema response format) to one simulator on a loopback port, with the
same number of requests in flight, and no rate limits or faults. Each runs as a process of its
own; the simulator runs in a thread of this one, so neither client is charged for it.

- knrun: a temporary operator folder (prompts/, pricing.toml verified today, the units in
  SQLite, a passing preflight receipt with an approval far above the run's cost), then
  `knrun go --concurrency N`, with KNRUN_SIM_TIME_SCALE=1 (the simulator runs in real time).
- cookbook: its requests JSONL holds the same bodies (plus each unit's id as `metadata`), run by
  bench/_cookbook_child.py: its request and token limits are set far above anything it reaches,
  so its limiter never binds. It has no bound on requests in flight of its own (a task per
  request); aiohttp's connection pool is what bounds them, and the child sets it to N (aiohttp's
  default is 100). Its logging is at WARNING (the default, INFO, writes a line per request).
  Its `api_endpoint_from_url` only accepts https:// URLs; the child gives it the endpoint.
- tiktoken: the cookbook counts prompt tokens with tiktoken, which downloads its encodings from
  the internet (blocked here). A shim module named `tiktoken`, written to a temporary folder
  first on the cookbook's PYTHONPATH, counts len(text) // 4 "tokens" instead: cheaper than real
  tiktoken, so the CPU comparison favours the cookbook.

The cookbook is not part of this repository (its licence is not ours): get it from
https://github.com/openai/openai-cookbook, examples/api_request_parallel_processor.py, and pass
its path. It needs aiohttp (`pip install aiohttp`; not a knrun dependency).

    PYTHONPATH=src:bench python bench/vs_cookbook.py \
        --cookbook /tmp/cookbook/api_request_parallel_processor.py \
        [--units 2000] [--concurrency 50] [--latencies 0.5,0] [--repeats 3]

Figures, per client and simulated latency (min / median / max over the repeats):

- throughput: units per second from the first chat request the simulator received to the last
  reply it sent (the simulator's own clock, the same for both clients);
- CPU/unit: the client process's user + system CPU seconds (its whole life: interpreter start,
  imports, setup and run) divided by the units; per core, 1 / CPU/unit units/s;
- knrun/cookbook: the ratios of the medians (throughput above 1 and CPU below 1 favour knrun);
- simulator load: its CPU seconds per second of the run. Near 1.0 it is a whole core busy, and
  the simulator, not the client, bounds the throughput;
- peak in flight: the most requests the simulator held at once;
- other processes: CPU seconds per second used by everything else on the machine meanwhile
  (from /proc/stat; loopback network work the kernel charges to no process lands here too).
  Well above that on a 2-core machine, the throughput figures are disturbed: run again.

Reading them: the cookbook's main loop wakes every 1 ms whatever there is to do, and starts at
most one request per wake. Its CPU therefore grows with the run's length (per unit, with the
latency), and at 0 s latency it launches requests one by one, with only a handful in flight.
knrun's fixed pool (`--concurrency N`) starts unpaced: N requests in flight from the first
second, and it paces only once xAI announces or enforces a limit (none here), so at 0 s
latency it is bound by its own CPU and the simulator's.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from _common import ROOT, job, table
from _cookbook_inputs import TIKTOKEN_SHIM, cookbook_requests, operator_folder
from knrun.sim.scenario import Scenario
from knrun.sim.server import serve_in_thread
from knrun.sim.xai import XaiSimulator

HERE = Path(__file__).resolve().parent
CLIENT_ENV_PREFIXES = ("XAI_", "GROK_", "CLOUDFLARE_", "D1_", "KNRUN_", "PYTHON")


@dataclass
class Run:
    units: int
    span_s: float  # first request received to last reply sent, by the simulator's clock
    cpu_s: float  # the client process, user + system
    wall_s: float  # the client process, start to exit
    sim_cpu_s: float
    peak_in_flight: int  # as the simulator saw it
    other_cpu_s: float | None  # everything else on the machine meanwhile (Linux only)

    @property
    def rate(self) -> float:
        return self.units / self.span_s

    @property
    def cpu_ms_per_unit(self) -> float:
        return self.cpu_s / self.units * 1e3

    @property
    def sim_load(self) -> float:
        return self.sim_cpu_s / self.wall_s

    @property
    def other_load(self) -> float:
        return (self.other_cpu_s or 0.0) / self.wall_s


# -- running one client -----------------------------------------------------------------------


def simulator(latency_s: float) -> XaiSimulator:
    """No rate limits, no faults, credit that never runs out; real time."""
    return XaiSimulator(Scenario(latency={"median_s": latency_s}, balance_usd=Decimal(10_000_000)))


def client_env(**values: str) -> dict[str, str]:
    """This environment without any xAI, store or Python path settings, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLIENT_ENV_PREFIXES)}
    return env | values


def machine_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat; None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def measured(
    command: list[str], env: dict[str, str], cwd: Path, sim: XaiSimulator, units: int
) -> Run:
    """Run `command` to its end; its CPU from the kernel's account of waited-for children."""
    before, sim_cpu = resource.getrusage(resource.RUSAGE_CHILDREN), time.process_time()
    busy, started = machine_busy_s(), time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    sim_cpu = time.process_time() - sim_cpu
    busy_after = machine_busy_s()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    stats = sim.stats
    if stats.chat_requests != units or stats.outcomes["ok"] != units:
        raise SystemExit(
            f"expected {units} answered requests, the simulator saw {stats.chat_requests}: "
            f"{dict(stats.outcomes)}\n{done.stdout}\n{done.stderr}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    span = stats.answered[-1][0] - stats.arrivals[0]
    other = None if busy is None or busy_after is None else busy_after - busy - cpu - sim_cpu
    return Run(units, span, cpu, wall, sim_cpu, stats.peak_in_flight, other)


def run_knrun(template: Path, work: Path, latency_s: float, concurrency: int, units: int) -> Run:
    """`knrun go` in a fresh copy of the prepared operator folder."""
    folder = work / "knrun"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(template, folder)
    sim = simulator(latency_s)
    with serve_in_thread(sim) as origin:
        env = client_env(
            PYTHONPATH=str(ROOT / "src"),
            XAI_BASE_URL=f"{origin}/v1",
            XAI_API_KEY=sim.scenario.api_key,
            KNRUN_STORE="sqlite:knrun.sqlite",
            KNRUN_SIM_TIME_SCALE="1",  # the simulator keeps real time
        )
        command = [sys.executable, "-m", "knrun", "go", "--concurrency", str(concurrency)]
        return measured(command, env, folder, sim, units)


def run_cookbook(
    cookbook: Path, requests: Path, work: Path, latency_s: float, concurrency: int, units: int
) -> Run:
    results = work / "cookbook_results.jsonl"
    results.unlink(missing_ok=True)
    sim = simulator(latency_s)
    with serve_in_thread(sim) as origin:
        command = [
            sys.executable,
            str(HERE / "_cookbook_child.py"),
            str(cookbook),
            str(requests),
            str(results),
            f"{origin}/v1/chat/completions",
            sim.scenario.api_key,
            str(concurrency),
        ]
        env = client_env(PYTHONPATH=str(work / "shim"))
        run = measured(command, env, work, sim, units)
    saved = results.read_text().splitlines()
    failed = [line for line in saved if '"choices"' not in line]
    if len(saved) != units or failed:
        raise SystemExit(f"cookbook saved {len(saved)} results, {len(failed)} without a reply")
    return run


# -- the report -------------------------------------------------------------------------------


def spread(runs: list[Run], figure: Callable[[Run], float], digits: int) -> str:
    values = sorted(figure(run) for run in runs)
    low, mid, high = values[0], statistics.median(values), values[-1]
    return f"{mid:.{digits}f} (min {low:.{digits}f}, max {high:.{digits}f})"


def report(latency_s: float, knrun: list[Run], cookbook: list[Run], concurrency: int) -> None:
    rows = []
    for name, runs in (("knrun", knrun), ("cookbook", cookbook)):
        rows.append((f"{name} throughput", spread(runs, lambda r: r.rate, 1) + " units/s"))
        rows.append((f"{name} CPU/unit", spread(runs, lambda r: r.cpu_ms_per_unit, 3) + " ms"))
        rows.append((f"{name} client wall", spread(runs, lambda r: r.wall_s, 2) + " s"))
        rows.append((f"{name} simulator load", spread(runs, lambda r: r.sim_load, 2) + " CPU/s"))
        rows.append((f"{name} peak in flight", spread(runs, lambda r: r.peak_in_flight, 0)))
        if all(run.other_cpu_s is not None for run in runs):
            rows.append(
                (f"{name} other processes", spread(runs, lambda r: r.other_load, 2) + " CPU/s")
            )

    def median(runs: list[Run], figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(run) for run in runs)

    rate = median(knrun, lambda r: r.rate) / median(cookbook, lambda r: r.rate)
    cpu = median(knrun, lambda r: r.cpu_ms_per_unit) / median(cookbook, lambda r: r.cpu_ms_per_unit)
    rows.append(("knrun/cookbook throughput", f"{rate:.2f}"))
    rows.append(("knrun/cookbook CPU/unit", f"{cpu:.2f}"))
    table(
        f"{knrun[0].units:,} units, {concurrency} in flight, simulated latency {latency_s:g} s "
        f"(median, min, max of {len(knrun)})",
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cookbook",
        type=Path,
        required=True,
        help="path to the OpenAI cookbook's examples/api_request_parallel_processor.py",
    )
    parser.add_argument("--units", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--latencies", default="0.5,0", help="simulated latencies, seconds")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cookbook = args.cookbook.resolve()
    if not cookbook.is_file():
        parser.error(f"--cookbook {cookbook}: no such file")
    with tempfile.TemporaryDirectory(prefix="knrun-vs-cookbook-") as tmp:
        work = Path(tmp)
        (work / "shim").mkdir()
        (work / "shim" / "tiktoken.py").write_text(TIKTOKEN_SHIM)
        template = work / "operator"
        units = operator_folder(template, args.units)
        requests = work / "cookbook_requests.jsonl"
        assert cookbook_requests(template / "knrun.sqlite", job(), requests) == units
        print(
            f"knrun: `knrun go --concurrency {args.concurrency}`. cookbook: aiohttp pool of "
            f"{args.concurrency} connections (its only bound on requests in flight), request and "
            "token limits it never reaches, logging at WARNING.\n"
            "tiktoken is a shim for the cookbook (a token per 4 characters): cheaper than the "
            "real one, so the cookbook's CPU figures are on the low side."
        )
        for latency in (float(x) for x in args.latencies.split(",")):
            knrun_runs, cookbook_runs = [], []
            for _ in range(args.repeats):
                knrun_runs.append(run_knrun(template, work, latency, args.concurrency, units))
                cookbook_runs.append(
                    run_cookbook(cookbook, requests, work, latency, args.concurrency, units)
                )
            report(latency, knrun_runs, cookbook_runs, args.concurrency)


if __name__ == "__main__":
    main()
