"""SqliteStore across real processes: two claimers on one file never share a unit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import EXAMPLE_JOB, plain_units, seed_units
from knrun.errors import ConfigError
from knrun.job import JobSpec
from knrun.store import SqliteStore

CLAIMER = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from knrun.job import load_job
    from knrun.store import SqliteStore

    async def main(path, owner):
        store = SqliteStore(load_job(Path(sys.argv[3])), Path(path))
        got = []
        while page := await store.claim(50, owner, 600):
            got.extend(unit.id for unit in page)
        await store.close()
        print(json.dumps(got))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_two_processes_claiming_from_one_file_share_without_duplicates(
    tmp_path: Path, job: JobSpec
) -> None:
    import asyncio
    import sqlite3

    path = tmp_path / "units.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    seed_units(conn, plain_units(2000))
    conn.close()

    async def migrate() -> None:
        store = SqliteStore(job, path)
        await store.migrate()
        await store.close()

    asyncio.run(migrate())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(path), owner, str(EXAMPLE_JOB)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for owner in ("proc-a", "proc-b")
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    a, b = (json.loads(out) for out, _ in outputs)
    assert set(a).isdisjoint(b)
    assert sorted(a + b) == list(range(1, 2001))


def test_a_missing_folder_is_a_config_error(tmp_path: Path, job: JobSpec) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        SqliteStore(job, tmp_path / "nope" / "units.sqlite")


def test_sqlite_errors_are_classified_as_passing_or_refused(tmp_path: Path) -> None:
    import sqlite3

    from knrun.store.sqlite import classify

    assert classify(tmp_path, sqlite3.OperationalError("database is locked")).retryable
    assert classify(tmp_path, sqlite3.OperationalError("disk I/O error")).retryable
    assert not classify(tmp_path, sqlite3.IntegrityError("CHECK constraint failed")).retryable
    assert not classify(tmp_path, sqlite3.OperationalError("no such column: x")).retryable
