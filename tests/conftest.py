"""Shared fixtures: a clean environment, a fake clock, the example job, and seeded stores."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from knrun.clock import utc_now
from knrun.job import JobSpec, load_job
from knrun.pricing import load_pricing
from knrun.receipt import Receipt, save_receipt
from knrun.sim.corpus import synthetic_units, write_jsonl
from knrun.sim.d1 import D1Simulator
from knrun.sim.scenario import Scenario
from knrun.sim.server import serve_in_thread
from knrun.sim.xai import XaiSimulator
from knrun.store import D1Store, SqliteStore, SqlUnitStore
from knrun.store.importer import import_units
from knrun.store.limiter import RequestLimiter
from workerd_d1 import RestConnection, WorkerdD1, node_available, serve_workerd_d1

ROOT = Path(__file__).resolve().parent.parent
# The repository root is an operator's folder: the example job, prices and checklist live there,
# once (the wheel carries them for `knrun init`).
EXAMPLE_JOB = ROOT / "prompts" / "kn-1.6.toml"
EXAMPLE_PRICING = ROOT / "pricing.toml"
EXAMPLE_CHECKLIST = ROOT / "checklist.md"
ENV_PREFIXES = ("XAI_", "GROK_", "CLOUDFLARE_", "D1_", "KNRUN_")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's keys or store settings."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIXES):
            monkeypatch.delenv(name)
    # Pacing keeps simulated time, a hundred times faster than real: its first rate, its
    # backoffs and its rounds take milliseconds. Not faster: a request's real round trip here
    # (a millisecond or two) must stay short against a pacing second.
    monkeypatch.setenv("KNRUN_SIM_TIME_SCALE", "0.01")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeClock:
    """Time that only moves when something sleeps on it: limiter waits and backoffs are instant."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.now += seconds
        self.slept += seconds
        import asyncio

        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def job() -> JobSpec:
    return load_job(EXAMPLE_JOB)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder like an operator's: prompts/ and pricing.toml, as the working dir."""
    (tmp_path / "prompts").mkdir()
    shutil.copy(EXAMPLE_JOB, tmp_path / "prompts" / EXAMPLE_JOB.name)
    shutil.copy(EXAMPLE_PRICING, tmp_path / "pricing.toml")
    shutil.copy(EXAMPLE_CHECKLIST, tmp_path / "checklist.md")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- seeded tables --------------------------------------------------------------------------------

UNIT_COLUMNS = [
    "id",
    "unit_code",
    "title",
    "application",
    "elements",
    "performance_criteria",
    "knowledge_evidence",
    "status",
    "restricted_access",
]


def seed_units(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Create the example job's `units` table (as an operator's might be) and fill it."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS units (id INTEGER PRIMARY KEY, unit_code TEXT, title TEXT, "
        "application TEXT, elements TEXT, performance_criteria TEXT, knowledge_evidence TEXT, "
        "status TEXT, restricted_access INTEGER)"
    )
    marks = ", ".join("?" for _ in UNIT_COLUMNS)
    conn.executemany(
        f"INSERT INTO units ({', '.join(UNIT_COLUMNS)}) VALUES ({marks})",
        [[row.get(column) for column in UNIT_COLUMNS] for row in rows],
    )
    if conn.in_transaction:
        conn.commit()


def plain_units(count: int) -> list[dict[str, Any]]:
    """`count` units that all match the example job's where clause."""
    rows = []
    for unit in synthetic_units(count):
        unit.update(status="Current", restricted_access=0)
        rows.append(unit)
    return rows


StoreFactory = Callable[..., SqlUnitStore]


class Backend:
    """One store backend under test: how to seed it, open stores on it, and read it directly.
    "sqlite" is the embedded store; "d1" is D1Store against this project's simulator; "workerd"
    is D1Store against Cloudflare's own D1 engine (workerd, through Miniflare)."""

    def __init__(
        self,
        kind: str,
        tmp_path: Path,
        job: JobSpec,
        clock: FakeClock,
        workerd: WorkerdD1 | None = None,
    ) -> None:
        self.kind = kind
        self.job = job
        self.clock = clock
        self.path = tmp_path / "units.sqlite"
        self.sim: D1Simulator | None = None
        self.workerd = workerd
        self.conn: Any
        if kind == "sqlite":
            self.conn = sqlite3.connect(self.path, isolation_level=None)
        elif kind == "workerd":
            assert workerd is not None
            self.conn = RestConnection(workerd)
            self.conn.reset()
        else:
            self.sim = D1Simulator(self.path, clock=clock, sleep=clock.sleep)
            self.conn = self.sim.connection
        self.opened: list[SqlUnitStore] = []

    def seed(self, rows: Iterable[dict[str, Any]]) -> None:
        seed_units(self.conn, rows)

    def open(self, job: JobSpec | None = None) -> SqlUnitStore:
        job = job or self.job
        store: SqlUnitStore
        # Contract tests are about semantics: requests are not spaced out here.
        unlimited = RequestLimiter(1e9, clock=self.clock, sleep=self.clock.sleep)
        if self.kind == "sqlite":
            store = SqliteStore(job, self.path, clock=self.clock)
        elif self.workerd is not None:
            store = D1Store(
                job,
                account_id=self.workerd.account_id,
                database_id=self.workerd.database_id,
                api_token=SecretStr(self.workerd.api_token),
                base_url=self.workerd.base_url,
                limiter=unlimited,
                clock=self.clock,
                sleep=self.clock.sleep,
            )
        else:
            assert self.sim is not None
            store = D1Store(
                job,
                account_id=self.sim.account_id,
                database_id=self.sim.database_id,
                api_token=SecretStr(self.sim.api_token),
                base_url=self.sim.base_url(),
                transport=self.sim.transport(),
                limiter=unlimited,
                clock=self.clock,
                sleep=self.clock.sleep,
            )
        self.opened.append(store)
        return store

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, params)
        columns = [d[0] for d in cursor.description or ()]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


WORKERD_REQUIRED = os.environ.get("KNRUN_REQUIRE_WORKERD") == "1"  # set by CI


def workerd_unavailable() -> str | None:
    """Why Cloudflare's D1 engine cannot run here; CI requires it, so there it is a failure."""
    reason = node_available()
    if reason is not None and WORKERD_REQUIRED:
        pytest.fail(f"KNRUN_REQUIRE_WORKERD=1 but workerd D1 cannot run: {reason}")
    return reason


@pytest.fixture(scope="session")
def workerd_d1() -> Iterator[WorkerdD1]:
    """One workerd D1 server for the whole session (each test drops the tables it made)."""
    reason = workerd_unavailable()
    if reason is not None:
        pytest.skip(f"workerd D1 unavailable: {reason}")
    with serve_workerd_d1() as server:
        yield server


@pytest.fixture(params=["sqlite", "d1", "workerd"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, job: JobSpec, clock: FakeClock
) -> AsyncIterator[Backend]:
    workerd = request.getfixturevalue("workerd_d1") if request.param == "workerd" else None
    made = Backend(request.param, tmp_path, job, clock, workerd)
    yield made
    for store in made.opened:
        await store.close()


@pytest.fixture
def xai_sim() -> XaiSimulator:
    """An xAI simulator with calls 1000x faster than life."""
    return XaiSimulator(Scenario(latency={"time_scale": 0.001}))


@pytest.fixture
def xai_server(xai_sim: XaiSimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[XaiSimulator]:
    """The simulator on a loopback port, with the environment pointing knrun at it."""
    with serve_in_thread(xai_sim) as origin:
        monkeypatch.setenv("XAI_BASE_URL", f"{origin}/v1")
        monkeypatch.setenv("XAI_MANAGEMENT_BASE_URL", origin)
        monkeypatch.setenv("XAI_API_KEY", xai_sim.scenario.api_key)
        monkeypatch.setenv("XAI_MANAGEMENT_KEY", xai_sim.scenario.management_key)
        yield xai_sim


@pytest.fixture
def units_file(tmp_path: Path) -> Path:
    path = tmp_path / "units.jsonl"
    write_jsonl(path, 30)
    return path


# -- a project ready to run ------------------------------------------------------------------------


def refresh_pricing_dates(path: Path) -> None:
    """The shipped pricing.toml ages; a run needs it verified today."""
    today = datetime.now(UTC).date()
    path.write_text(re.sub(r"verified_at = \S+", f"verified_at = {today}", path.read_text()))


def prepare_units(project: Path, count: int) -> int:
    """Import `count` synthetic units into the project's SQLite store, migrate it, and return
    how many match the job's where clause."""
    job = load_job(project / "prompts" / EXAMPLE_JOB.name)
    source = project / "units.jsonl"
    write_jsonl(source, count)
    import_units(source, project / "knrun.sqlite", job)

    async def migrate() -> int:
        store = SqliteStore(job, project / "knrun.sqlite")
        await store.migrate()
        remaining = await store.count_remaining()
        await store.close()
        return remaining

    return asyncio.run(migrate())


def write_receipt(
    project: Path,
    *,
    estimate_unit_ticks: int | None = None,
    approved_ticks: int | None = None,
    created_at: str | None = None,
    batch: dict[str, Any] | None = None,
) -> Receipt:
    """A passing receipt as preflight would write it, for the job and pricing as they are now."""
    job = load_job(project / "prompts" / EXAMPLE_JOB.name)
    price = load_pricing(project / "pricing.toml").price_for(job.model)
    unit = estimate_unit_ticks or price.estimate_ticks(450, 2900)
    receipt = Receipt(
        job=job.name,
        version=job.version,
        model=job.model,
        prompt_hash=job.prompt_hash,
        pricing_fingerprint=price.fingerprint(),
        created_at=created_at or utc_now(),
        run_id="test",
        remaining_units=1000,
        estimate_ticks=unit * 1000,
        estimate_unit_ticks=unit,
        approved_ticks=approved_ticks or unit * 1000 * 115 // 100,
        balance_ticks=None,
        balance_source="attested",
        batch=batch or {},
    )
    save_receipt(project / ".knrun", job, receipt)
    return receipt


@pytest.fixture
def ready(project: Path) -> Path:
    """A project with 500 imported units, fresh prices and a passing receipt."""
    refresh_pricing_dates(project / "pricing.toml")
    prepare_units(project, 500)
    write_receipt(project)
    return project


def set_price(path: Path, model: str, key: str, value: str) -> None:
    """Set `key` in pricing.toml's entry for `model` (adding it when the entry has none)."""
    text = path.read_text()
    start = text.index(f'[models."{model}"]')
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    block, line = text[start:end], f"{key} = {value}"
    if re.search(rf"^{key} = ", block, flags=re.M):
        block = re.sub(rf"^{key} = .*$", line, block, flags=re.M)
    else:
        block = block.rstrip("\n") + f"\n{line}\n"
    path.write_text(text[:start] + block + text[end:])


@pytest.fixture
def served(project: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[XaiSimulator]:
    """An xAI simulator on a port for knrun run as a process, 50x faster than life (a 5 s
    call takes about 0.1 s), with credit to spare."""
    sim = XaiSimulator(Scenario(latency={"time_scale": 0.02}, balance_usd=Decimal(1000)))
    with serve_in_thread(sim) as origin:
        monkeypatch.setenv("XAI_BASE_URL", f"{origin}/v1")
        monkeypatch.setenv("XAI_API_KEY", sim.scenario.api_key)
        yield sim
