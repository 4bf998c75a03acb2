"""Reading the operator's TOML files (job, pricing, scenario): every way one can be wrong
becomes one `file: field: problem` line, never a traceback."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from knrun.errors import ConfigError


def read_toml(
    path: Path, what: str, *, parse_float: Callable[[str], Any] = float
) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"), parse_float=parse_float)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def problems(path: Path, exc: ValidationError) -> ConfigError:
    """Every validation problem of the file, on one line."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (a typo?)"
        lines.append(f"{path}: {where}: {message}")
    return ConfigError("; ".join(lines))
