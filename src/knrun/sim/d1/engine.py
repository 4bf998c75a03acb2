"""How D1 runs statements, as Cloudflare's own engine (workerd) was measured to (tests/workerd):
what it refuses and with which words, how it binds JSON parameters (every number as REAL, byte
arrays as BLOBs), and how values come back through JSON (integers past 2^53 rounded, integral
reals as integers, BLOBs as byte arrays, infinities as null)."""

from __future__ import annotations

import math
import re
import sqlite3
import time
from typing import Any

MAX_PARAMS = 100
MAX_STATEMENT_BYTES = 100_000
ALLOWED_PRAGMAS = {
    "table_list",
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "quick_check",
    "foreign_key_check",
    "foreign_key_list",
    "case_sensitive_like",
    "ignore_check_constraints",
    "legacy_alter_table",
    "recursive_triggers",
    "reverse_unordered_selects",
    "foreign_keys",
    "defer_foreign_keys",
}
_TRANSACTION = re.compile(r"^\s*(BEGIN|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE)\b", re.IGNORECASE)
_PRAGMA = re.compile(r"^\s*PRAGMA\s+(?:\w+\.)?(\w+)", re.IGNORECASE)
# Public reports say the REST API refuses pragma_*() table functions, which workerd allows:
# the simulator keeps the stricter rule, so knrun uses the PRAGMA statement form.
_PRAGMA_FUNCTION = re.compile(r"\bpragma_\w+\s*\(", re.IGNORECASE)
_FORBIDDEN = re.compile(r"^\s*ATTACH\b|\b_cf_\w+", re.IGNORECASE)
WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE|ALTER|CREATE|DROP)\b", re.IGNORECASE)
TRANSACTION_REFUSAL = (
    "D1_ERROR: To execute a transaction, please use the state.storage.transaction() or "
    "state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT "
    "statements. The JavaScript API is safer because it will automatically roll back on "
    "exceptions, and because it interacts correctly with Durable Objects' automatic atomic "
    "write coalescing."
)
JS_SAFE_INTEGER = 2**53


class SqlRefused(Exception):
    def __init__(self, message: str, status: int = 400, code: int = 7500) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def check_statement(sql: str, params: list[Any]) -> None:
    if not sql.strip():
        raise SqlRefused("D1_ERROR: No SQL statements detected.")
    if _only_comments(sql):
        raise SqlRefused("D1_ERROR: SQL code did not contain a statement.")
    if _TRANSACTION.match(sql):
        raise SqlRefused(TRANSACTION_REFUSAL)
    pragma = _PRAGMA.match(sql)
    if (
        (pragma and pragma.group(1).lower() not in ALLOWED_PRAGMAS)
        or _PRAGMA_FUNCTION.search(sql)
        or _FORBIDDEN.search(sql)
    ):
        raise SqlRefused("D1_ERROR: not authorized: SQLITE_AUTH")
    if len(sql.encode()) > MAX_STATEMENT_BYTES:
        raise SqlRefused("D1_ERROR: statement too long: SQLITE_TOOBIG")
    if len(params) > MAX_PARAMS:
        raise SqlRefused("D1_ERROR: too many SQL variables: SQLITE_ERROR")


def _only_comments(sql: str) -> bool:
    stripped = re.sub(r"--[^\n]*|/\*.*?\*/", "", sql, flags=re.S)
    return not stripped.strip(" \n\t;")


def bind(value: Any) -> Any:
    """A JSON parameter as workerd binds it: every number as REAL (so an integer past 2^53 is
    rounded, and 2 becomes 2.0 in a TEXT column), booleans as 0/1, byte arrays as BLOBs."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        if all(isinstance(b, int) and 0 <= b <= 255 for b in value):
            return bytes(value)
        raise SqlRefused("D1_TYPE_ERROR: Type 'object' not supported for value ''")
    if isinstance(value, dict):
        raise SqlRefused("D1_TYPE_ERROR: Type 'object' not supported for value '[object Object]'")
    return value


def to_json(value: Any) -> Any:
    """A result value as it reaches the client through JSON from a JavaScript engine."""
    if isinstance(value, bytes):
        return list(value)
    if isinstance(value, int) and abs(value) > JS_SAFE_INTEGER:
        return int(float(repr(float(value))))  # what a double prints back as
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) <= JS_SAFE_INTEGER:
            return int(value)
    return value


def sqlite_message(exc: sqlite3.Error) -> str:
    """SQLite's error in D1's words: "D1_ERROR: <message>: SQLITE_CONSTRAINT (extended: ...)"."""
    name = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
    text = str(exc)
    if text.startswith("Incorrect number of bindings"):
        return "D1_ERROR: Wrong number of parameter bindings for SQL query."
    base = "_".join(name.split("_")[:2])
    suffix = name if base == name else f"{base} (extended: {name})"
    return f"D1_ERROR: {text}: {suffix}"


def run_statement(
    conn: sqlite3.Connection, sql: str, params: list[Any], *, raw: bool
) -> dict[str, Any]:
    """One statement inside the caller's transaction, with D1's result and meta."""
    check_statement(sql, params)
    started = time.perf_counter()
    before = conn.total_changes
    try:
        cursor = conn.execute(sql, [bind(value) for value in params])
        rows = cursor.fetchall()
    except sqlite3.Error as exc:
        raise SqlRefused(sqlite_message(exc)) from None
    columns = [d[0] for d in cursor.description or ()]
    changes = conn.total_changes - before
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    meta = {
        "served_by": "knrun-d1-simulator",
        "duration": round((time.perf_counter() - started) * 1000),
        "changes": changes,
        "last_row_id": cursor.lastrowid or 0,
        "changed_db": changes > 0,
        "size_after": page_count * 4096,
        # D1 counts rows scanned (and bills them); sqlite3 does not say, so this counts rows
        # returned or changed: a lower bound.
        "rows_read": len(rows),
        "rows_written": changes,
    }
    values = [[to_json(value) for value in row] for row in rows]
    results: Any = (
        {"columns": columns, "rows": values}
        if raw
        else [dict(zip(columns, row, strict=True)) for row in values]
    )
    return {"results": results, "success": True, "meta": meta}


def split_unbound(body: dict[str, Any]) -> list[dict[str, Any]]:
    """`sql` may hold several statements joined by ';' only when it has no parameters."""
    sql, params = body["sql"], body.get("params") or []
    if not isinstance(sql, str):
        return [body]
    parts, current = [], ""
    for piece in sql.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            if current.strip(" \n\t;"):
                parts.append({"sql": current.strip()})
            current = ""
    if current.strip(" \n\t;"):
        parts.append({"sql": current.strip()})
    if len(parts) > 1 and params:
        raise SqlRefused(
            "D1_ERROR: When executing multiple SQL statements in a single call, only the last "
            "statement can have parameters."
        )
    return [body] if len(parts) <= 1 else parts


def statements(body: Any) -> list[dict[str, Any]]:
    """The request body's statements, or TypeError/ValueError for a malformed body."""
    if isinstance(body, dict) and isinstance(body.get("batch"), list):
        items = body["batch"]
    elif isinstance(body, dict) and "sql" in body:
        items = split_unbound(body)
    else:
        raise TypeError("expected {'sql', 'params'} or {'batch': [...]}")
    if not items:
        raise ValueError("empty batch")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("sql"), str):
            raise TypeError("every statement needs an 'sql' string")
        if not isinstance(item.get("params", []), list):
            raise TypeError("'params' must be an array")
    return list(items)
