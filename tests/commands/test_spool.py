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


class PickyStore:
    """Refuses, outright, any batch holding unit 2; has no row for unit 4; can refuse
    everything as 'passing' (an outage) or for good (a revoked token)."""

    def __init__(self) -> None:
        self.written: list[object] = []
        self.outage = False
        self.revoked = False

    async def write_results(self, outcomes: list[UnitResult]) -> list[UnitResult]:
        from knrun.errors import StoreError, StoreRefused, StoreUnusable

        if self.outage:
            raise StoreError("D1 HTTP 503: unavailable")
        if self.revoked:
            raise StoreUnusable("D1 HTTP 401: Authentication error (check CLOUDFLARE_API_TOKEN)")
        if any(o.unit_id == 2 for o in outcomes):
            raise StoreRefused("CHECK constraint failed: kn_overview")
        self.written += [o.unit_id for o in outcomes if o.unit_id != 4]
        return [o for o in outcomes if o.unit_id == 4]


async def test_an_entry_the_store_refuses_is_quarantined_and_the_rest_are_written(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    for i in (1, 2, 3):
        await spool.append(result(i), job="kn", version="1.6")
    store = PickyStore()
    delivery = await spool.deliver(store, await spool.pending("kn", "1.6"))  # type: ignore[arg-type]
    assert store.written == [1, 3] and delivery.written == 2
    assert delivery.quarantined == ["2: CHECK constraint failed: kn_overview"]
    assert await spool.pending("kn", "1.6") == [] and await spool.quarantined() == 1
    await spool.close()


async def test_a_store_that_refuses_every_write_quarantines_nothing(tmp_path: Path) -> None:
    """A rotated token is not a bad result: every entry stays pending, for the next start."""
    from knrun.errors import StoreUnusable

    spool = Spool(tmp_path / "spool.sqlite")
    for i in (1, 2, 3):
        await spool.append(result(i), job="kn", version="1.6")
    store = PickyStore()
    store.revoked = True
    with pytest.raises(StoreUnusable, match="CLOUDFLARE_API_TOKEN"):
        await spool.deliver(store, await spool.pending("kn", "1.6"))  # type: ignore[arg-type]
    assert len(await spool.pending("kn", "1.6")) == 3 and await spool.quarantined() == 0
    await spool.close()


async def test_a_result_whose_row_is_gone_is_kept_not_forgotten(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    for i in (3, 4):
        await spool.append(result(i), job="kn", version="1.6")
    store = PickyStore()
    delivery = await spool.deliver(store, await spool.pending("kn", "1.6"))  # type: ignore[arg-type]
    assert store.written == [3] and delivery.written == 1
    assert delivery.quarantined == [
        "4: no row with this id in the table (deleted, or its id changed)"
    ]
    assert await spool.quarantined() == 1 and await spool.pending("kn", "1.6") == []
    await spool.close()


async def test_the_operator_sees_every_version_and_can_set_aside_and_requeue(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    await spool.append(result(1), job="kn", version="1.5")
    await spool.append(result(2), job="kn", version="1.6")
    await spool.append(result(3), job="kn", version="1.6")
    held = {(h.job, h.version): (h.pending, h.quarantined) for h in await spool.held()}
    assert held == {("kn", "1.5"): (1, 0), ("kn", "1.6"): (2, 0)}
    await spool.set_aside("kn", "1.6", "set aside by the operator")
    assert {(h.version, h.pending, h.quarantined) for h in await spool.held()} == {
        ("1.5", 1, 0),
        ("1.6", 0, 2),
    }
    assert await spool.quarantine_reasons("kn", "1.6") == ["set aside by the operator (2)"]
    await spool.requeue("kn", "1.6")
    assert [o.unit_id for _, o in await spool.pending("kn", "1.6")] == [2, 3]
    await spool.close()


async def test_trouble_that_may_pass_is_raised_and_nothing_is_forgotten(tmp_path: Path) -> None:
    from knrun.errors import StoreError

    spool = Spool(tmp_path / "spool.sqlite")
    await spool.append(result(1), job="kn", version="1.6")
    store = PickyStore()
    store.outage = True
    with pytest.raises(StoreError, match="503"):
        await spool.deliver(store, await spool.pending("kn", "1.6"))  # type: ignore[arg-type]
    assert len(await spool.pending("kn", "1.6")) == 1
    await spool.close()


async def test_an_entry_this_knrun_cannot_read_is_moved_aside_not_blocking(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite")
    await spool.append(result(1), job="kn", version="1.6")
    conn = sqlite3.connect(tmp_path / "spool.sqlite")
    conn.execute(
        "INSERT INTO spool (job, version, kind, payload, created_at) "
        "VALUES ('kn', '1.6', 'result', '{\"old_field\": 1}', 0)"
    )
    conn.commit()
    conn.close()
    assert [o.unit_id for _, o in await spool.pending("kn", "1.6")] == [1]
    assert await spool.quarantined() == 1
    await spool.close()
