"""Helpers for tests that drive the CLI in an operator folder (the `project` fixture's): run a
command, read the SQLite store, stage failures and batches."""

from __future__ import annotations

import heapq
import json
import sqlite3
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from knrun.cli import app
from knrun.sim.xai import XaiSimulator

BATCH_OK = {"accepted": True}  # a receipt's batch canary that passed


def knrun(*args: str) -> tuple[int, str, str]:
    """Run one command in-process: its exit code, stdout and stderr."""
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def fresh_status() -> dict[str, Any]:
    """`status --json`, counted now (`status` reuses a count up to 30 s old otherwise)."""
    code, out, err = knrun("status", "--json", "--fresh")
    assert code == 0, err
    return dict(json.loads(out))


def rows(sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect("knrun.sqlite")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def batch_runs() -> list[dict[str, Any]]:
    found = rows("SELECT detail FROM knrun_runs WHERE kind = 'go' ORDER BY started_at")
    return [json.loads(detail)["batch"] for (detail,) in found]


def run_now(sim: XaiSimulator, count: int) -> None:
    """The first `count` requests added are due at once (the others keep their time)."""
    for batch in sim.batch.batches.values():
        for entry in batch.added[:count]:
            entry.due = min(entry.due, sim.now())
        batch.queue = [(entry.due, entry.seq, entry) for _, _, entry in batch.queue]
        heapq.heapify(batch.queue)


def fail_units(
    count: int, attempts: int = 1, reason: str = "invalid_json", request_hash: str | None = None
) -> None:
    """Mark the first `count` unfailed units in scope failed at 1.6 for `reason`, as a run
    would (with the request hash of the job as it is, unless told otherwise)."""
    from knrun.job import load_job

    sent = request_hash or load_job(Path("prompts/kn-1.6.toml")).request_hash
    conn = sqlite3.connect("knrun.sqlite")
    conn.execute(
        "UPDATE units SET kn_status = 'failed', kn_status_version = '1.6', "
        "kn_error = ? || ': it failed', kn_attempts = ?, kn_request_hash = ? WHERE id IN "
        "(SELECT id FROM units WHERE status = 'Current' AND restricted_access = 0 "
        f"AND kn_status IS NULL ORDER BY id LIMIT {count})",
        (reason, attempts, sent),
    )
    conn.commit()
    conn.close()
