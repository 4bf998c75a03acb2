"""`knrun spool`: paid results waiting in the local spool, for every job and version."""

from __future__ import annotations

from typing import Annotated

import typer

from knrun.cli.app import JobOption, JsonOption, guarded, run_async, spool_app
from knrun.commands import spool as spool_ops
from knrun.commands.spool import listing_json
from knrun.context import load_context
from knrun.display import console, tables

VersionOption = Annotated[
    str | None,
    typer.Option(
        "--version",
        help="The job version to act on. Default: every version with entries.",
        show_default=False,
    ),
]


@spool_app.callback()
@guarded
def spool_list(
    ctx: typer.Context,
    as_json: JsonOption = False,
) -> None:
    """Pending and quarantined entries for every job and version (`knrun spool` alone)."""
    if ctx.invoked_subcommand is not None:
        return
    listing = run_async(spool_ops.listing())
    if as_json:
        console.json_result(listing_json(listing))
    else:
        tables.show_spool(listing)


@spool_app.command("replay")
@guarded
def spool_replay(job: JobOption = None, version: VersionOption = None) -> None:
    """Write the job's pending entries to the store (another version's as that version's)."""
    written = run_async(spool_ops.replay(load_context(job), version))
    if not written:
        console.note("nothing pending for this job")
    for each, count in written.items():
        console.note(f"v{each}: {count} results written")


@spool_app.command("requeue")
@guarded
def spool_requeue(job: JobOption = None, version: VersionOption = None) -> None:
    """Move the job's quarantined entries back to pending, for `replay` to try again."""
    versions = run_async(spool_ops.requeue(load_context(job), version))
    console.note(f"requeued: {', '.join(versions) or 'nothing quarantined'}")


@spool_app.command("set-aside")
@guarded
def spool_set_aside(
    version: Annotated[str, typer.Option("--version", help="The job version to set aside.")],
    job: JobOption = None,
    reason: Annotated[
        str, typer.Option(help="Kept with the entries.")
    ] = "set aside by the operator",
) -> None:
    """Keep a version's pending entries out of the way (in quarantine), so a run of another
    version may start. `requeue` brings them back."""
    run_async(spool_ops.set_aside(load_context(job), version, reason))
    console.note(f"v{version}: pending entries set aside (see `knrun spool`)")
