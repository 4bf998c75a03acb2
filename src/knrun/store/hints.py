"""What a store's "no such table / column" means for the operator: which setting or command
fixes it. Bad SQL of the operator's own making is a usage error (exit 2), not a failure."""

from __future__ import annotations

import re

from knrun.errors import ConfigError, StoreError
from knrun.job import JobSpec

_NO_TABLE = re.compile(r"no such table: (?:main\.)?\"?(\w+)")
_NO_COLUMN = re.compile(r"no such column: \"?([\w.]+)")


def explain(exc: StoreError, job: JobSpec, store: str) -> ConfigError | None:
    """A ConfigError with the fix, when `exc` is a missing table or a misspelt column the job
    names; None for anything else (knrun's own columns are `db migrate`'s business)."""
    if exc.retryable:
        return None
    text = str(exc)
    source = job.source
    table = _NO_TABLE.search(text)
    if table and table.group(1) == source.table:
        return ConfigError(
            f"{store}: no table {source.table!r} (source.table): load units with "
            "`knrun db import FILE`, then run `knrun db migrate`"
        )
    column = _NO_COLUMN.search(text)
    if column is None:
        return None
    name = column.group(1).split(".")[-1]
    if re.search(rf"\b{re.escape(name)}\b", source.where or ""):
        return ConfigError(
            f"source.where = {source.where!r} names a column table {source.table!r} does not "
            f"have ({_excerpt(text)}): fix source.where in the job file"
        )
    if name == source.id or name in source.columns:
        key = "source.id" if name == source.id else "source.columns"
        return ConfigError(
            f"{key} names column {name!r}, which table {source.table!r} does not have: fix "
            "the job file, or load the column with `knrun db import`"
        )
    return None  # SQL of knrun's own: a bug to report as it is


def _excerpt(text: str) -> str:
    """The store's words from "no such column" on, without the backend's prefix."""
    return (
        text[text.index("no such column") :].split(" at offset")[0].removesuffix(": SQLITE_ERROR")
    )
