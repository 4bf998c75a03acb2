"""The README, the docs and .env.example stay true to the code (links, commands, options and
paths named in them: test_docs_links.py)."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from conftest import EXAMPLE_JOB, ROOT
from knrun.cli import app
from knrun.config import Settings

README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}


def command_paths(group: typer.Typer, prefix: str = "knrun") -> list[str]:
    paths = [f"{prefix} {command.name}" for command in group.registered_commands]
    for sub in group.registered_groups:
        assert sub.typer_instance is not None
        paths += command_paths(sub.typer_instance, f"{prefix} {sub.name}")
    return paths


def test_readme_help_block_matches_the_cli() -> None:
    block = re.search(r"<!-- help:start -->\n```text\n(.*?)```\n<!-- help:end -->", README, re.S)
    assert block, "README lost its help block markers"
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0
    assert block.group(1) == result.stdout


def test_every_command_is_documented() -> None:
    everything = "\n".join([README, *DOCS.values()])
    for path in command_paths(app):
        assert f"`{path}" in everything, f"neither README nor docs/ documents `{path}`"


def test_env_example_lists_exactly_the_settings_keys() -> None:
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z][A-Z0-9_]+)=", example, re.M))
    expected = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names = getattr(alias, "choices", [alias])
        expected.add(str(names[0]))  # the first name is the documented one; others are aliases
    assert documented == expected
    assert "GROK_API_KEY" in example  # the alias is mentioned, not given its own line


def test_readme_and_ci_use_the_same_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in README
    assert re.search(r"^python -m pytest -q$", ci, re.M)


def test_docs_document_every_status_json_key() -> None:
    from knrun.commands.status import status_report
    from knrun.job import load_job
    from knrun.store.types import Progress

    report = status_report(
        load_job(EXAMPLE_JOB),
        "sqlite:x",
        Progress("1.6", 0, 0, 0, 0, 0, 0, 0, None, None, None),
    )
    section = DOCS["status.md"].split("## `knrun status --json`", 1)[1].split("\n#", 1)[0]
    for key in report:
        assert f"`{key}`" in section, f"status --json key {key} is not in docs/status.md"


def test_docs_document_every_run_summary_json_key() -> None:
    from collections import Counter

    from knrun.commands.summary import RunSummary
    from knrun.store.types import Money

    summary = RunSummary(
        "r", "go", 0, "ok", 1.0, 1, 1, 0, dict(Counter()), Money(), None, None, None, 0, 0, 0, 0, 0
    )
    section = DOCS["summary.md"].split("### `knrun go --json`", 1)[1].split("\n#", 1)[0]
    for key in summary.to_json():
        assert f"`{key}`" in section, f"go --json key {key} is not in docs/summary.md"
