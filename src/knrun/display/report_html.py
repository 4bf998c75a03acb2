"""The report as one self-contained HTML page: inline CSS and SVG charts, no script, no link to
anything outside the file, so it opens offline and can be mailed or archived as it is."""

from __future__ import annotations

from html import escape

from knrun.commands.report import Report, Series
from knrun.display.charts import chart_svg
from knrun.pricing import format_usd
from knrun.store.types import Progress, RunRecord

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1180px; margin: 1.5em auto; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eee; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.5em 0; }
figure svg { width: 100%; height: auto; }
"""


def render_report(report: Report) -> str:
    corpus = report.corpus
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>knrun report: {escape(report.job)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>knrun report: {escape(report.job)}</h1>",
        f'<p class="meta">version {escape(report.version)} of the job, model '
        f"{escape(report.model)}, store {escape(report.store)}; written "
        f"{escape(report.generated_at)}. Money is the best figure knrun has for each request: "
        "the provider's bill, else the reply at pricing.toml's prices, else a possibly-billed "
        "request's expected cost.</p>",
        _progress_table(report.progress),
        f"<h2>The corpus: {escape(corpus.title)}</h2>",
        _series_summary(corpus, report.runs_with_charges),
        _figure(corpus, "corpus"),
    ]
    for run, series in report.sections:
        anchor = f"run-{run.run_id}" if run else "run"
        parts += [
            f'<h2 id="{escape(anchor)}">{escape(series.title)}</h2>',
            _run_line(run),
            _series_summary(series, None),
            _figure(series, anchor),
        ]
    if report.runs_with_charges > len(report.sections):
        shown = len(report.sections)
        parts.append(
            f'<p class="meta">The {shown} most recent runs with charges have a section each; '
            f"the other {report.runs_with_charges - shown} count in the corpus above.</p>"
        )
    parts += ["<h2>Runs</h2>", _runs_table(report.runs), "</body></html>"]
    return "\n".join(parts) + "\n"


def _figure(series: Series, name: str) -> str:
    return f'<figure class="charts" data-scope="{escape(name)}">{chart_svg(series)}</figure>'


def _rows(pairs: list[tuple[str, str]]) -> str:
    cells = "".join(
        f"<tr><th>{escape(key)}</th><td class='n'>{escape(value)}</td></tr>" for key, value in pairs
    )
    return f"<table>{cells}</table>"


def _progress_table(progress: Progress) -> str:
    reasons = ", ".join(f"{reason} {n:,}" for reason, n in progress.failed_by_reason.items())
    return "<h2>Units at this version</h2>" + _rows(
        [
            ("units in the job", f"{progress.total:,}"),
            ("done", f"{progress.done:,}"),
            ("failed (now)", f"{progress.failed:,}" + (f" ({reasons})" if reasons else "")),
            ("remaining", f"{progress.remaining:,}"),
            ("spent on this version", format_usd(progress.money.spent_ticks)),
        ]
    )


def _series_summary(series: Series, runs: int | None) -> str:
    share = series.cache_share
    latencies = [v for v in series.latency_mean_ms if v is not None]
    pairs = [
        ("requests", f"{sum(series.requests):,}"),
        ("units done", f"{sum(series.done):,}"),
        ("failed requests", f"{sum(series.failed):,}"),
        ("spent", format_usd(series.total_spent_ticks)),
        ("prompt tokens", f"{sum(series.input_tokens):,}"),
        ("output tokens", f"{sum(series.output_tokens):,}"),
        ("cache share", "-" if share is None else f"{share:.1%}"),
        ("slowest bucket's mean latency", f"{max(latencies) / 1000:.2f} s" if latencies else "-"),
    ]
    if runs is not None:
        pairs.insert(0, ("runs with charges", f"{runs:,}"))
    return _rows(pairs)


def _run_line(run: RunRecord | None) -> str:
    if run is None:
        return '<p class="meta">no record of this run in the runs table</p>'
    ended = run.ended_at or run.updated_at or "-"
    reason = f"; {run.exit_reason}" if run.exit_reason else ""
    return (
        f'<p class="meta">started {escape(run.started_at)}, ended {escape(ended)}, exit '
        f"{escape(str(run.exit_code))}{escape(reason)}</p>"
    )


def _runs_table(runs: list[RunRecord]) -> str:
    if not runs:
        return '<p class="meta">no runs recorded</p>'
    head = (
        "<tr><th>run</th><th>kind</th><th>version</th><th>model</th><th>started</th>"
        "<th>state</th><th>ok</th><th>failed</th><th>billed</th><th>exit</th></tr>"
    )
    body = "".join(
        f"<tr><td>{escape(r.run_id)}</td><td>{escape(r.kind)}</td><td>{escape(r.version)}</td>"
        f"<td>{escape(r.model)}</td><td>{escape(r.started_at)}</td><td>{escape(r.state)}</td>"
        f"<td class='n'>{r.units_ok:,}</td><td class='n'>{r.units_failed:,}</td>"
        f"<td class='n'>{format_usd(r.billed_ticks)}</td>"
        f"<td class='n'>{escape(str(r.exit_code if r.exit_code is not None else '-'))}</td></tr>"
        for r in runs
    )
    return f"<table>{head}{body}</table>"
