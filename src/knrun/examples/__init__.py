"""The example job, pricing file and checklist: what `knrun demo` rehearses with. The copies at
the repository's root are symlinks to these."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

JOB = "kn-1.6.toml"
PRICING = "pricing.toml"
CHECKLIST = "checklist.md"


def copy_to(folder: Path) -> None:
    """An operator's project layout in `folder`: prompts/<job>, pricing.toml, checklist.md."""
    source = files(__package__)
    (folder / "prompts").mkdir(parents=True, exist_ok=True)
    for name, target in (
        (JOB, folder / "prompts" / JOB),
        (PRICING, folder / PRICING),
        (CHECKLIST, folder / CHECKLIST),
    ):
        with source.joinpath(name).open("rb") as stream:
            target.write_bytes(stream.read())
