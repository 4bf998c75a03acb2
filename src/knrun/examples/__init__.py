"""The operator's files that `knrun init` writes and `knrun demo` rehearses with: the example job,
`pricing.toml`, `checklist.md` and `.env.example`, whose one source is the repository root, and
an operator's `.gitignore`, which is this package's own.

A wheel carries the root files here, under `knrun/examples/<same path>` (pyproject.toml's
`force-include`). A source tree or an editable install has none here: they are read from the
repository root itself, so there is never a second copy to drift."""

from __future__ import annotations

import tomllib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from knrun.errors import KnrunError

JOB = "kn-1.6.toml"
PRICING = "pricing.toml"
CHECKLIST = "checklist.md"

# The operator's files, by their path in an operator's folder (and in the repository root).
OPERATOR_FILES = (Path("prompts") / JOB, Path(PRICING), Path(CHECKLIST), Path(".env.example"))
# Not the repository's .gitignore, which also ignores what developing knrun leaves behind: the
# lines an operator's folder needs (a test keeps the repository's a superset of them).
GITIGNORE = "gitignore"

# every file a working folder gets -> where it goes
LAYOUT = {**{path.as_posix(): path for path in OPERATOR_FILES}, GITIGNORE: Path(".gitignore")}


def packaged() -> Traversable:
    return files(__package__)


def repository_root() -> Path | None:
    """The source tree this package sits in (src/knrun/examples), if it is knrun's own."""
    root = Path(__file__).resolve().parents[3]
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if project.get("project", {}).get("name") == "knrun" else None


def source() -> Traversable:
    """Where the operator's files are read from: this package when it carries them (a wheel),
    else the repository root (a source tree, an editable install). All from one place or an
    error: never some from each."""
    here = packaged()
    found = [path for path in OPERATOR_FILES if here.joinpath(path.as_posix()).is_file()]
    if len(found) == len(OPERATOR_FILES):
        return here
    root = repository_root()
    if not found and root is not None:
        missing = [path for path in OPERATOR_FILES if not (root / path).is_file()]
        if not missing:
            return root
        where = f"the repository root {root} lacks {', '.join(map(str, missing))}"
    elif found:
        where = f"the package carries only {', '.join(map(str, found))}"
    else:
        where = "the package carries none of them and is not in knrun's source tree"
    raise KnrunError(f"knrun's example files are incomplete: {where}; reinstall knrun")


def read(name: str) -> bytes:
    """A file of the layout by its key in LAYOUT."""
    base = packaged() if name == GITIGNORE else source()
    return base.joinpath(name).read_bytes()


def existing(folder: Path) -> list[Path]:
    """The files of the layout already in `folder`."""
    return [folder / target for target in LAYOUT.values() if (folder / target).exists()]


def copy_to(folder: Path) -> list[Path]:
    """An operator's working folder in `folder`: prompts/<job>, pricing.toml, checklist.md,
    .env.example, .gitignore. Overwrites; callers that must not check `existing` first."""
    contents = {target: read(name) for name, target in LAYOUT.items()}  # all found, or nothing
    written = []
    for target, data in contents.items():
        path = folder / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written
