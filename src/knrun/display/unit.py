"""`knrun show ID` for a person: the unit's prompt, its result or failure, and its charges."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from knrun.display.console import out


def show_unit_view(view: dict[str, Any]) -> None:
    out.print(
        f"[bold]unit {escape(str(view['id']))}[/] · {escape(view['job'])} "
        f"v{escape(view['version'])} · {view['state']}"
        f" · attempts {view['attempts'] or 0}",
        markup=True,
    )
    for message in view["messages"]:
        out.print(f"\n[bold]-- {message['role']} prompt --[/]", markup=True)
        out.print(message["content"].strip(), markup=False)
    if view["error"]:
        out.print("\n[bold]-- failed --[/]", markup=True)
        out.print(view["error"], markup=False)
    if view["result"] is not None:
        label = "result" if view["state"] == "done" else f"result of v{view['result_version']}"
        out.print(f"\n[bold]-- {label} --[/]", markup=True)
        out.print(json.dumps(view["result"], indent=2, ensure_ascii=False), markup=False)
    elif not view["error"]:
        out.print("\n[bold]-- no result yet --[/]", markup=True)
    _charges(view["charges"], view["spent_usd"])


def _charges(charges: list[dict[str, Any]], spent: str) -> None:
    if not charges:
        out.print("\nno requests charged for this unit", markup=False)
        return
    table = Table(box=box.SIMPLE, pad_edge=False, title_justify="left")
    for name in ("when", "run", "model", "outcome", "in", "cached", "out", "reasoning", "USD"):
        table.add_column(name, justify="right" if name in _NUMBERS else "left")
    for c in charges:
        cost = c["cost_usd"] + ("" if c["cost_basis"] == "billed" else f" ({c['cost_basis']})")
        tokens = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
        cells = [c["at"], c["run_id"], c["model"] or "-", c["outcome"]]
        cells += [_tokens(c[name]) for name in tokens]
        table.add_row(*(Text(str(cell)) for cell in [*cells, cost]))
    out.print(f"\n[bold]-- requests: {len(charges)}, ${spent} --[/]", markup=True)
    out.print(table)


_NUMBERS = ("in", "cached", "out", "reasoning")


def _tokens(value: Any) -> str:
    return "-" if value is None else f"{int(value):,}"
