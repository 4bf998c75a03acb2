"""`knrun db migrate` and `knrun db import`: the unit store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knrun.cli.app import JobOption, db_app, guarded, run_async
from knrun.context import Context, load_context
from knrun.display import console
from knrun.errors import ConfigError
from knrun.store.importer import import_units


async def _migrate(ctx: Context) -> list[str]:
    async with ctx.open_store() as store:
        return await store.migrate()


@db_app.command("migrate")
@guarded
def db_migrate(job: JobOption = None) -> None:
    """Add knrun's bookkeeping and output columns and its runs table (idempotent)."""
    ctx = load_context(job)
    added = run_async(_migrate(ctx))
    where = ctx.target.describe()
    if added:
        console.note(f"{where}: added {len(added)} column(s): {', '.join(added)}")
    else:
        console.note(f"{where}: already up to date")


@db_app.command("import")
@guarded
def db_import(
    file: Annotated[Path, typer.Argument(help="Units as JSONL (one object per line) or CSV.")],
    job: JobOption = None,
) -> None:
    """Load units into the local SQLite store: all rows or none; re-importing updates inputs."""
    ctx = load_context(job)
    if ctx.target.kind != "sqlite" or ctx.target.path is None:
        raise ConfigError("db import writes to a local SQLite store: set KNRUN_STORE=sqlite:PATH")
    report = import_units(file, ctx.target.path, ctx.job)
    console.note(
        f"{file}: {report.rows} rows into {ctx.target.describe()} table {ctx.job.source.table} "
        f"({report.inserted} new, {report.updated} updated"
        + (", table created" if report.table_created else "")
        + (f", columns added: {', '.join(report.columns_added)}" if report.columns_added else "")
        + "). Next: knrun db migrate"
    )
