"""A series of a job's charges drawn as inline SVG with matplotlib: spend and units, throughput
and latency, the prompt cache's share, and failures by reason. SVG needs no JavaScript and no
network, and keeps text as text, so a report stays small and opens in any browser."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from knrun.commands.report import Series
from knrun.pricing import ticks_to_usd

# Text stays text (the browser's fonts draw it): a fraction of the size of glyphs as paths.
# A fixed hash salt: the same data draws the same file.
matplotlib.rcParams.update(
    {"svg.fonttype": "none", "svg.hashsalt": "knrun", "font.size": 9, "axes.titlesize": 10}
)
INK, MONEY, DONE, FAILED, CACHE = "#333333", "#1f6f8b", "#2e8b57", "#c0392b", "#8e44ad"


def chart_svg(series: Series) -> str:
    """The series' four panels as one `<svg>` element, ready to inline in HTML."""
    figure = Figure(figsize=(11, 6.4), layout="constrained")
    spend, traffic, cache, failures = figure.subplots(2, 2).flat
    _spend_and_units(spend, series)
    _throughput_and_latency(traffic, series)
    _cache_share(cache, series)
    _failures(failures, series.failures)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    # Inline: no XML prolog, and none of the RDF metadata block matplotlib adds to each file.
    return re.sub(r"<metadata>.*?</metadata>\s*", "", text[text.index("<svg") :], flags=re.S)


def _dates(axes: Axes) -> None:
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
    axes.grid(True, alpha=0.3)


def _empty(axes: Axes, title: str, why: str) -> None:
    axes.set_title(title)
    axes.text(0.5, 0.5, why, ha="center", va="center", transform=axes.transAxes, color="#777")
    axes.set_xticks([])
    axes.set_yticks([])


def _cumulative(values: Sequence[int]) -> list[int]:
    return [0, *itertools.accumulate(values)]


def _spend_and_units(axes: Axes, series: Series) -> None:
    title = "Spend and units over time (cumulative, UTC)"
    if not series.starts:
        _empty(axes, title, "no charges recorded")
        return
    # Totals at each bucket's end, from zero at the first one's start. Ticks are summed as
    # integers; only the drawn points become floats.
    x = _x(series)
    edges = [x[0], *(start + series.bucket_s / 86400 for start in x)]
    spent = [float(ticks_to_usd(t)) for t in _cumulative(series.spent_ticks)]
    axes.plot(edges, spent, color=MONEY, linewidth=3, alpha=0.5, label="spent (USD)")
    axes.set_ylabel("USD", color=MONEY)
    axes.set_ylim(bottom=0)
    units = axes.twinx()
    units.plot(edges, _cumulative(series.done), color=DONE, label="units done")
    units.plot(edges, _cumulative(series.failed), color=FAILED, label="failed requests")
    units.set_ylabel("units")
    units.set_ylim(bottom=0)
    _legend(axes, units)
    axes.set_title(title)
    _dates(axes)


def _throughput_and_latency(axes: Axes, series: Series) -> None:
    title = f"Throughput and latency ({_bucket_label(series.bucket_s)} buckets)"
    if not series.starts:
        _empty(axes, title, "no charges recorded")
        return
    per_minute = [n * 60 / series.bucket_s for n in series.requests]
    axes.plot(_x(series), per_minute, color=INK, marker=".", label="requests / min")
    axes.set_ylabel("requests / min")
    axes.set_ylim(bottom=0)
    latency = axes.twinx()
    mean = [None if v is None else v / 1000 for v in series.latency_mean_ms]
    peak = [None if v is None else v / 1000 for v in series.latency_max_ms]
    latency.plot(_x(series), _nan(mean), color=MONEY, label="mean latency (s)")
    latency.plot(
        _x(series), _nan(peak), color=MONEY, alpha=0.4, linestyle="--", label="max latency (s)"
    )
    latency.set_ylabel("seconds")
    latency.set_ylim(bottom=0)
    _legend(axes, latency)
    axes.set_title(title)
    _dates(axes)


def _cache_share(axes: Axes, series: Series) -> None:
    share = series.cache_share
    title = "Prompt cache share (cached / prompt tokens)"
    if share is None:
        _empty(axes, title, "no prompt tokens recorded")
        return
    pairs = zip(series.cached_tokens, series.input_tokens, strict=True)
    points = [cached / prompt * 100 if prompt else None for cached, prompt in pairs]
    axes.plot(_x(series), _nan(points), color=CACHE, marker=".")
    axes.axhline(share * 100, color=CACHE, alpha=0.4, linestyle="--")
    axes.set_ylim(0, 100)
    axes.set_ylabel("% of prompt tokens")
    axes.set_title(f"{title}: {share:.1%} overall")
    _dates(axes)


def _failures(axes: Axes, failures: dict[str, int]) -> None:
    title = "Failed requests by reason"
    if not failures:
        _empty(axes, title, "no failed requests")
        return
    reasons = list(failures)[:12]  # the most frequent
    counts = [failures[reason] for reason in reasons]
    axes.barh(reasons, counts, color=FAILED, height=0.6)
    # The first on top; room for four bars at least, so a lone reason is a bar, not a wall.
    axes.set_ylim(max(len(reasons), 4) - 0.3, -0.7)
    for y, count in enumerate(counts):
        axes.text(count, y, f" {count:,}", va="center")
    axes.set_xlabel("requests")
    axes.set_title(title)
    axes.grid(True, axis="x", alpha=0.3)


def _legend(*axes: Axes) -> None:
    handles: list[Any] = []
    labels: list[str] = []
    for each in axes:
        h, lab = each.get_legend_handles_labels()
        handles += h
        labels += lab
    axes[0].legend(handles, labels, loc="upper left", fontsize=8, framealpha=0.8)


def _x(series: Series) -> list[float]:
    """Bucket starts as matplotlib's date numbers (days since 1970-01-01 UTC)."""
    return [start.timestamp() / 86400 for start in series.starts]


def _nan(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else v for v in values]


def _bucket_label(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
