"""The example working folder as package data: the job, pricing file, checklist, `.env.example`
and `.gitignore` that `knrun init` writes and `knrun demo` rehearses with."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

JOB = "kn-1.6.toml"
PRICING = "pricing.toml"
CHECKLIST = "checklist.md"

# package file -> where it goes in a working folder
LAYOUT = {
    JOB: Path("prompts") / JOB,
    PRICING: Path(PRICING),
    CHECKLIST: Path(CHECKLIST),
    "env.example": Path(".env.example"),
    "gitignore": Path(".gitignore"),
}


def read(name: str) -> bytes:
    with files(__package__).joinpath(name).open("rb") as stream:
        return stream.read()


def existing(folder: Path) -> list[Path]:
    """The files of the layout already in `folder`."""
    return [folder / target for target in LAYOUT.values() if (folder / target).exists()]


def copy_to(folder: Path) -> list[Path]:
    """An operator's working folder in `folder`: prompts/<job>, pricing.toml, checklist.md,
    .env.example, .gitignore. Overwrites; callers that must not check `existing` first."""
    written = []
    for name, target in LAYOUT.items():
        path = folder / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(read(name))
        written.append(path)
    return written
