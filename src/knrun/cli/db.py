"""`knrun db migrate` and `knrun db import`: the unit store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knrun.cli.app import JobOption, db_app, guarded, run_async
from knrun.commands.db_import import import_into
from knrun.context import Context, load_context
from knrun.display import console
from knrun.store.importer import ImportReport, import_units


async def _migrate(ctx: Context) -> list[str]:
    async with ctx.open_store() as store:
        return await store.migrate()


async def _import_d1(ctx: Context, file: Path) -> ImportReport:
    async with ctx.open_store() as store:
        return await import_into(store, file, ctx.job)


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
    """Load units into the store (SQLite or D1): all rows or none; re-importing updates
    inputs and keeps results."""
    ctx = load_context(job)
    if ctx.target.kind == "sqlite" and ctx.target.path is not None:
        report = import_units(file, ctx.target.path, ctx.job)
    else:
        report = run_async(_import_d1(ctx, file))
    console.note(
        f"{file}: {report.rows} rows into {ctx.target.describe()} table {ctx.job.source.table} "
        f"({report.inserted} new, {report.updated} updated"
        + (", table created" if report.table_created else "")
        + (f", columns added: {', '.join(report.columns_added)}" if report.columns_added else "")
        + "). Next: knrun db migrate"
    )
