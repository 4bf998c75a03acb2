"""`knrun init [DIR]`: a working folder from the package's own data, never over existing files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from knrun import examples
from knrun.cli.app import app, guarded
from knrun.display import console
from knrun.errors import ConfigError


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
    console.note(
        f"next: cd {folder}, copy .env.example to .env and fill in the keys, "
        "edit prompts/, then `knrun pricing check` and `knrun preflight`"
    )
