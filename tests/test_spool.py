"""The spool: paid outcomes are durable before the store sees them, and replayable."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from knrun.spool import Spool
from knrun.store.types import UnitFailure, UnitResult

pytestmark = pytest.mark.anyio


def result(unit_id: int) -> UnitResult:
    return UnitResult(
        unit_id,
        {"kn_overview": f"note {unit_id} ✓"},
        "m",
        123,
        10,
        20,
        "2026-11-22T00:00:00Z",
        "run-1",
    )


async def test_appends_are_on_disk_and_come_back_unchanged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    failure = UnitFailure(7, "invalid_json", "Expecting ','", "2026-11-22T00:00:00Z", "run-1", "me")
    seqs = [await spool.append(o, job="kn", version="1.6") for o in (result(1), failure)]
    # Another connection sees them at once: they are committed, not buffered.
    conn = sqlite3.connect(tmp_path / "spool.sqlite")
    assert conn.execute("SELECT COUNT(*) FROM spool").fetchone() == (2,)
    assert await spool.pending("kn", "1.6") == [(seqs[0], result(1)), (seqs[1], failure)]
    assert await spool.pending("kn", "1.6", limit=1) == [(seqs[0], result(1))]
    assert await spool.pending("kn", "1.7") == []
    await spool.close()


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    seqs = await asyncio.gather(
        *(spool.append(result(i), job="kn", version="1.6") for i in range(200))
    )
    assert sorted(seqs) == list(range(1, 201))
    assert spool.commits < 20  # group commit: far fewer fsyncs than appends
    await spool.close()


async def test_entries_the_store_confirmed_are_forgotten_the_rest_survive_a_restart(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    seqs = [await spool.append(result(i), job="kn", version="1.6") for i in range(3)]
    await spool.forget(seqs[:2])
    assert [seq for seq, _ in await spool.pending("kn", "1.6")] == [seqs[2]]
    await spool.close()
    reopened = Spool(tmp_path / "spool.sqlite")
    assert [seq for seq, _ in await reopened.pending("kn", "1.6")] == [seqs[2]]
    await reopened.close()
