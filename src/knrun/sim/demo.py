"""`knrun demo`: the whole pipeline offline. Simulated xAI, Management API and D1 on a loopback
port, a fresh folder laid out like an operator's, and the real commands run in order, so every
code path is the one a real run takes. Scenarios make each guard fire on purpose."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from knrun import examples
from knrun.errors import ConfigError, ExitCode
from knrun.job import load_job
from knrun.sim.combined import Simulators
from knrun.sim.corpus import write_jsonl
from knrun.sim.d1 import D1Simulator
from knrun.sim.scenario import BatchBehaviour, Faults, OtherSpender, Scenario
from knrun.sim.server import serve_in_thread
from knrun.sim.xai import XaiSimulator
from knrun.store.importer import import_units

SCENARIOS = {
    "normal": "a clean run: every check passes, every unit is written",
    "incident": "April 2026 replayed: the job names a retired model (still served, at legacy "
    "prices) with the old script's price constants; preflight refuses before a cent is spent",
    "credits": "someone else on the team spends the prepaid credit mid-run: the breaker stops "
    "the run at the first 'used all available credits', no unit is failed for it",
    "flaky": "5% rate limits, 3% server errors, 2% malformed JSON: each refused request backs "
    "off on its own while the rest keep the pace, failures are recorded by reason, and "
    "`knrun retry` picks them up",
    "batch": "through xAI's Batch API at 20% off: preflight's batch canary, a `go --batch` "
    "killed with -9 while it adds requests, then a second one that re-attaches to the same "
    "batch, adds only what xAI does not hold, and collects every result",
}
# Every setting the demo points somewhere: the operator's own values must not leak in.
_ENV_KEYS = (
    "XAI_API_KEY",
    "GROK_API_KEY",
    "XAI_BASE_URL",
    "XAI_MANAGEMENT_KEY",
    "XAI_MANAGEMENT_BASE_URL",
    "XAI_TEAM_ID",
    "CLOUDFLARE_ACCOUNT_ID",
    "CLOUDFLARE_API_TOKEN",
    "D1_DATABASE_ID",
    "CLOUDFLARE_API_BASE_URL",
    "KNRUN_STORE",
    "KNRUN_JOB",
    "KNRUN_SIM_TIME_SCALE",
)

Invoke = Callable[[list[str]], int]  # runs one knrun command in-process, returns its exit code
Say = Callable[[str], None]


@dataclass
class Plan:
    scenario: str = "normal"
    units: int = 300
    store: str = "d1"  # d1 (REST, simulated) | sqlite
    folder: Path | None = None
    time_scale: float = 0.01  # 1/100 of real latency: a 5 s call takes 50 ms


def simulated_xai(plan: Plan) -> XaiSimulator:
    scenario = Scenario(latency={"time_scale": plan.time_scale})
    if plan.scenario == "credits":
        # $25 passes preflight; 30 requests in (the canary, then 20 units of the run), another
        # spender leaves one cent of it.
        scenario.other_spender = OtherSpender(after_requests=30, leaves_usd=Decimal("0.01"))
    elif plan.scenario == "flaky":
        scenario.faults = Faults(rate_limited=0.05, server_error=0.03, malformed_json=0.02)
    elif plan.scenario == "batch":
        # Each add call takes 20 s (so the kill lands mid-submission), each request 1.5-4.5 min.
        scenario.batch = BatchBehaviour(delay_s=180, add_latency_s=20)
    return XaiSimulator(scenario)


def replay_incident(folder: Path) -> None:
    """The operator's files as they were in April 2026: the brief's retired model, priced from
    the script's constant ($0.60 per million), and nobody had listed it as retired."""
    job = folder / "prompts" / examples.JOB
    job.write_text(
        re.sub(r'^model = "[^"]+"', 'model = "grok-3-fast"', job.read_text(), flags=re.M)
    )
    pricing = folder / examples.PRICING
    text = pricing.read_text().replace('models = ["grok-3-fast"]', "models = []")
    legacy = (
        '[models."grok-3-fast"]\ninput = 0.60\ncached_input = 0.60\noutput = 0.60\n'
        'source = "constants in the old script"\nverified_at = 2026-03-01\n\n[retired]'
    )
    pricing.write_text(text.replace("[retired]", legacy, 1))


@contextlib.contextmanager
def pointed_at(values: dict[str, str], folder: Path) -> Iterator[None]:
    """Work in `folder` with the environment pointing at the simulators; restore both after."""
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    here = Path.cwd()
    try:
        for key in _ENV_KEYS:
            os.environ.pop(key, None)
        os.environ.update(values)
        os.chdir(folder)
        yield
    finally:
        os.chdir(here)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(plan: Plan, invoke: Invoke, say: Say) -> int:
    if plan.scenario not in SCENARIOS:
        raise ConfigError(f"--scenario must be one of {', '.join(SCENARIOS)}")
    if plan.store not in ("d1", "sqlite"):
        raise ConfigError("--store must be d1 or sqlite")
    folder = plan.folder or Path(tempfile.mkdtemp(prefix=f"knrun-demo-{plan.scenario}-"))
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise ConfigError(f"{folder} is not empty: the demo needs a folder of its own")
    examples.copy_to(folder)
    if plan.scenario == "incident":
        replay_incident(folder)
    write_jsonl(folder / "units.jsonl", plan.units)
    d1 = None
    if plan.store == "d1":
        # The corpus goes into the file behind the D1 simulator; knrun then reaches it by REST.
        import_units(
            folder / "units.jsonl",
            folder / "d1.sqlite",
            load_job(folder / "prompts" / examples.JOB),
        )
        d1 = D1Simulator(folder / "d1.sqlite")
    simulators = Simulators(simulated_xai(plan), d1)
    say(f"knrun demo: scenario {plan.scenario}: {SCENARIOS[plan.scenario]}")
    say(
        f"  {plan.units} synthetic units of competency; store: "
        + ("Cloudflare D1 over REST (simulated)" if d1 else "local SQLite")
        + f"; xAI latency at {plan.time_scale:g} x real; folder {folder}"
    )
    started = time.monotonic()
    with serve_in_thread(simulators) as origin:
        env = simulators.env(origin)
        env["KNRUN_STORE"] = "d1" if d1 else "sqlite:knrun.sqlite"
        env["KNRUN_SIM_TIME_SCALE"] = f"{plan.time_scale:g}"  # pacing keeps the simulator's time
        with pointed_at(env, folder):
            code = _steps(plan, invoke, say, simulators.xai)
    say(
        f"\ndemo finished in {time.monotonic() - started:.1f} s with exit code {code} "
        f"({_meaning(code)}). Its files stay in {folder}: the run log under .knrun/runs/, the "
        "run history in checklist.md"
        + (
            ", and the store itself in d1.sqlite (`KNRUN_STORE=sqlite:d1.sqlite knrun status`)."
            if d1
            else ", the store in knrun.sqlite."
        )
    )
    return code


def _steps(plan: Plan, invoke: Invoke, say: Say, xai: XaiSimulator) -> int:
    def step(*args: str) -> int:
        say(f"\n$ knrun {' '.join(args)}")
        return invoke(list(args))

    if plan.store == "sqlite":
        step("db", "import", "units.jsonl")
    step("db", "migrate")
    step("pricing", "sync")
    if plan.scenario == "batch":
        return _batch_steps(step, say, xai)
    code = step("preflight")
    if code == ExitCode.OK:
        code = step("go")
        if plan.scenario == "flaky" and code == ExitCode.OK:
            code = step("retry", "--max-spend", "1")
    step("status")
    return code


def _batch_steps(step: Callable[..., int], say: Say, xai: XaiSimulator) -> int:
    code = step("preflight", "--batch")
    if code != ExitCode.OK:
        return code
    say("\n$ knrun go --batch   (in a process of its own, killed with -9 after its first add)")
    process = subprocess.Popen(
        [sys.executable, "-m", "knrun", "go", "--batch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    first = xai.batch.stats.added  # the canary's
    deadline = time.monotonic() + 60
    while xai.batch.stats.added == first and process.poll() is None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    added = xai.batch.stats.added - first
    say(
        f"killed: {added} requests had landed in the batch (an add in flight at the kill may "
        "still land); its units stay leased to the batch"
    )
    step("status", "--fresh")
    code = step("go", "--batch")
    stats = xai.batch.stats
    say(
        f"\nthe simulator's Batch API: {stats.created} batches (the canary's and the run's), "
        f"{stats.added} requests added, {stats.duplicates} added twice, "
        f"${stats.billed_ticks / 10**10:.4f} billed at 20% off "
        f"(${stats.live_ticks / 10**10:.4f} live)"
    )
    step("status", "--fresh")
    return code


def _meaning(code: int) -> str:
    return {
        0: "done",
        1: "runtime failure",
        2: "refused: not safe to run",
        3: "circuit breaker",
        4: "spend cap",
        5: "cost drift alarm",
        130: "interrupted",
    }.get(code, "unknown")
