"""The two clients' inputs for bench/vs_cookbook.py: knrun's operator folder (the example job,
pricing verified today, the units in SQLite, a passing receipt) and the cookbook's requests
file holding the same chat bodies, plus the tiktoken stand-in the cookbook imports."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from _common import JOB, PRICING, ROOT, job
from knrun.clock import utc_now
from knrun.job import JobSpec
from knrun.pricing import load_pricing
from knrun.receipt import Receipt, save_receipt
from knrun.sim.corpus import synthetic_units
from knrun.store import SqliteStore
from knrun.store.importer import import_units
from knrun.xai.client import chat_body

TIKTOKEN_SHIM = '''"""A stand-in for tiktoken (bench/vs_cookbook.py): a "token" per 4 characters.
Real tiktoken downloads its encodings from the internet, and costs more CPU than this."""


class _Encoding:
    def encode(self, text):
        return [0] * (len(text) // 4)


def get_encoding(name):
    return _Encoding()
'''


def write_units(path: Path, count: int) -> None:
    """`count` synthetic units, every one eligible for the example job."""
    with path.open("w", encoding="utf-8") as handle:
        for unit in synthetic_units(count):
            unit.update(status="Current", restricted_access=0)
            handle.write(json.dumps(unit) + "\n")


def operator_folder(folder: Path, units: int) -> int:
    """A folder `knrun go` runs in: the example job and pricing (verified today), the units in
    knrun.sqlite, and a passing receipt. Returns how many units are eligible."""
    spec = job()
    (folder / "prompts").mkdir(parents=True)
    shutil.copy(JOB, folder / "prompts" / JOB.name)
    today = datetime.now(UTC).date()
    pricing = re.sub(r"verified_at = \S+", f"verified_at = {today}", PRICING.read_text())
    (folder / "pricing.toml").write_text(pricing)
    shutil.copy(ROOT / "checklist.md", folder / "checklist.md")
    source = folder / "units.jsonl"
    write_units(source, units)
    db = folder / "knrun.sqlite"
    import_units(source, db, spec)
    eligible = asyncio.run(migrate(db))
    write_receipt(folder, spec, eligible)
    return eligible


async def migrate(db: Path) -> int:
    """`knrun db migrate` on an imported store; how many units it has to run."""
    store = SqliteStore(job(), db)
    await store.migrate()
    remaining = await store.count_remaining()
    await store.close()
    return remaining


def write_receipt(folder: Path, spec: JobSpec, units: int) -> None:
    """A passing preflight receipt, as preflight writes it, approving far more than the run
    costs: the spend cap never binds."""
    price = load_pricing(folder / "pricing.toml").price_for(spec.model)
    unit = price.estimate_ticks(450, 2900)
    receipt = Receipt(
        job=spec.name,
        version=spec.version,
        model=spec.model,
        prompt_hash=spec.prompt_hash,
        pricing_fingerprint=price.fingerprint(),
        created_at=utc_now(),
        run_id="bench",
        remaining_units=units,
        estimate_ticks=unit * units,
        estimate_unit_ticks=unit,
        approved_ticks=unit * units * 1000,
        balance_ticks=None,
        balance_source="attested",
    )
    save_receipt(folder / ".knrun", spec, receipt)


def cookbook_requests(db: Path, spec: JobSpec, path: Path) -> int:
    """The cookbook's requests file: for each unit knrun would run, the body knrun sends."""
    columns = [spec.source.id, *spec.source.columns]
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = conn.execute(
        f"SELECT {', '.join(columns)} FROM {spec.source.table} "
        f"WHERE {spec.source.where} ORDER BY {spec.source.id}"
    ).fetchall()
    conn.close()
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            body = chat_body(
                model=spec.model,
                messages=spec.render(dict(row)),
                temperature=spec.temperature,
                max_completion_tokens=spec.max_output_tokens,
                response_schema=spec.response_schema,
                schema_name=spec.schema_name,
                reasoning_effort=spec.reasoning_effort,
            )
            body["metadata"] = {"id": row[spec.source.id]}
            handle.write(json.dumps(body) + "\n")
    return len(rows)
