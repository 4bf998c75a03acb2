"""The operator's text that knrun puts into SQL: identifiers (always double-quoted, so only
plain names pass) and the job's `where` (checked so it cannot end knrun's own clause early)."""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_QUOTES = {"'": "'", '"': '"', "`": "`", "[": "]"}


def where_problem(where: str) -> str | None:
    """Why `where` could reach outside the parentheses knrun puts it in, if it could.

    knrun adds its resume clause as `(<where>) AND ...`: an unbalanced parenthesis, a ';' or a
    comment outside quotes would let the operator's text end that expression early (or comment
    out knrun's own clause), so those are refused. Quoted text may hold anything."""
    depth, index = 0, 0
    while index < len(where):
        char = where[index]
        if char in _QUOTES:
            close = where.find(_QUOTES[char], index + 1)
            if close < 0:
                return f"{char} at {index + 1} is never closed"
            index = close + 1
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return f"')' at {index + 1} closes a parenthesis that was never opened"
        elif char == ";":
            return "must be one SQL expression, without ';'"
        elif where.startswith(("--", "/*"), index):
            return "comments are not allowed (they could hide what knrun adds after it)"
        index += 1
    return f"{depth} parenthesis(es) never closed" if depth else None
