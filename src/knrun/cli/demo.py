"""`knrun demo` and `knrun sim serve`: the offline rehearsal and the simulators on a port."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knrun.cli.app import app, guarded, sim_app
from knrun.commands import sim_serve as serving
from knrun.display import console
from knrun.sim import demo as demo_run
from knrun.sim.combined import Simulators
from knrun.sim.d1 import D1Simulator
from knrun.sim.scenario import load_scenario
from knrun.sim.server import serve_forever
from knrun.sim.xai import XaiSimulator


@app.command("demo")
@guarded
def demo(
    scenario: Annotated[
        str,
        typer.Option(
            help="normal | incident | credits | flaky | batch: which guard to watch fire."
        ),
    ] = "normal",
    units: Annotated[int, typer.Option(min=20, help="Synthetic units to generate.")] = 300,
    store: Annotated[str, typer.Option(help="d1 (REST, simulated) or sqlite.")] = "d1",
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="An empty folder to work in. Default: a new temporary one.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rehearse the whole pipeline offline: simulated xAI and D1, synthetic units, then the real
    db migrate, pricing sync, preflight and go. No keys, no network, under a minute."""
    plan = demo_run.Plan(scenario=scenario, units=units, store=store, folder=folder)
    code = demo_run.run(plan, invoke, console.note)
    if code:
        raise typer.Exit(code)


def invoke(args: list[str]) -> int:
    """Run one knrun command in this process, as if typed: the demo's way to use the real CLI."""
    result = typer.main.get_command(app).main(args=args, prog_name="knrun", standalone_mode=False)
    return result if isinstance(result, int) else 0


@sim_app.command("serve")
@guarded
def sim_serve(
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8787,
    scenario: Annotated[
        Path | None,
        typer.Option(
            help="Scenario TOML (models, prices, balance, latency, faults).", show_default=False
        ),
    ] = None,
    d1_database: Annotated[
        Path, typer.Option("--d1-database", help="SQLite file behind the D1 simulator.")
    ] = Path("sim-d1.sqlite"),
) -> None:
    """Serve the simulators on one loopback port until Ctrl-C, and print the settings that point
    knrun (or any client) at them."""
    xai = XaiSimulator(load_scenario(scenario) if scenario else None)
    sock = serving.bind(host, port)  # a taken port is one error line, before anything else
    origin = f"http://{host}:{sock.getsockname()[1]}"
    simulators = Simulators(xai, D1Simulator(d1_database))
    env = simulators.env(origin)
    for line in serving.settings_text(env, origin, d1_database, serving.current_store()):
        console.note(line)
    serve_forever(simulators, host, port, sock=sock)
