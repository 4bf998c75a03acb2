"""Where a run leaves its record: a JSONL event log under `.knrun/runs/`, and a row in the run
history table of `checklist.md`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from knrun.files import write_atomically
from knrun.pricing import ModelPrice, format_usd
from knrun.run.events import Event
from knrun.store.types import RunRecord

CHECKLIST = Path("checklist.md")
HISTORY_HEADING = "## Run history"


class EventLog:
    """Appends every event as one JSON line, line-buffered: a `kill -9` loses nothing the run
    had already reported (unit events are a few a second, each line one write)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle: IO[str] = path.open("a", encoding="utf-8", buffering=1)

    def __call__(self, event: Event) -> None:
        self._handle.write(json.dumps(event.to_json(), default=str) + "\n")

    def close(self) -> None:
        self._handle.close()


def history_row(run: RunRecord, price: ModelPrice) -> str:
    prices = f"${price.input}/${price.cached_input}/${price.output}"
    estimate = format_usd(run.estimate_ticks, 2) if run.estimate_ticks is not None else "—"
    cells = [
        (run.ended_at or run.started_at).replace("T", " ").removesuffix("Z"),
        f"{run.kind} {run.run_id}",
        f"{run.job} v{run.version}",
        run.model,
        prices,
        str(run.units_ok),
        str(run.units_failed),
        estimate,
        format_usd(run.tracked_ticks, 4),
        format_usd(run.billed_ticks, 4),
        f"{run.exit_code} {run.exit_reason or ''}".strip().replace("|", "/"),
    ]
    return "| " + " | ".join(cells) + " |"


def append_history(run: RunRecord, price: ModelPrice, path: Path = CHECKLIST) -> bool:
    """Add the run's row to the checklist's history table; False if there is no checklist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    lines = text.splitlines()
    if HISTORY_HEADING not in lines:
        return False
    # After the last row of the first table below the heading, so notes after it stay put.
    at = lines.index(HISTORY_HEADING) + 1
    while at < len(lines) and not lines[at].startswith("|"):
        at += 1
    while at < len(lines) and lines[at].startswith("|"):
        at += 1
    lines.insert(at, history_row(run, price))
    # Replaced whole, never rewritten in place: a crash mid-write cannot cut the checklist short.
    write_atomically(path, "\n".join(lines) + "\n")
    return True
