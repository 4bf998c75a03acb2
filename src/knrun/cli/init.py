"""`knrun init [DIR]`: a working folder from knrun's own copy of the operator's files, never over
existing files, with a warning when the prices it ships are older than `pricing check` allows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knrun import examples
from knrun.cli.app import app, guarded, today
from knrun.display import console
from knrun.errors import ConfigError
from knrun.pricecheck import MAX_AGE_DAYS, stale_entries
from knrun.pricing import load_pricing


@app.command("init")
@guarded
def init(
    folder: Annotated[
        Path, typer.Argument(help="The folder to set up (created if missing).")
    ] = Path("."),
) -> None:
    """Write a working folder: the example job in prompts/, pricing.toml, checklist.md,
    .env.example and .gitignore. Refuses to overwrite any of them."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder")
    taken = examples.existing(folder)
    if taken:
        names = ", ".join(str(path) for path in taken)
        raise ConfigError(f"{folder}: would overwrite {names}; nothing written")
    written = examples.copy_to(folder)
    for path in written:
        console.note(f"wrote {path}")
    pricing = folder / examples.PRICING
    now = today()
    stale = stale_entries(load_pricing(pricing), now)
    if stale:
        oldest = min(stale.values())
        console.warn(
            f"{pricing}: the shipped prices were verified on {oldest}, {(now - oldest).days} "
            f"days ago (`knrun pricing check` allows {MAX_AGE_DAYS}): once XAI_API_KEY is in "
            "your .env, run `knrun pricing sync` and read the diff"
        )
    console.note(
        f"next: cd {folder}, copy .env.example to .env and fill in the keys, "
        "edit prompts/, then `knrun pricing check` and `knrun preflight`"
    )
