"""Every link, `knrun` command, option and repository path named in the README and in docs/
exists: a renamed command, a dropped option or a moved file fails here, not in a reader's hands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup

from conftest import ROOT
from knrun.cli import app

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGE = ROOT / "src" / "knrun"

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SPAN = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")  # may wrap a line, never a paragraph
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
# `knrun` as a program name (not `.knrun/`, `knrun_runs` or `src/knrun/`), then its arguments
# up to the end of the shell command.
COMMAND = re.compile(r"(?:^|(?<=[\s/(]))knrun(?=\s|$)([^;&|>#)]*)")
WORD = re.compile(r"^[a-z][a-z0-9-]*$")
OPTION = re.compile(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)")
ROOT_FILES = {".env.example", "CHANGELOG.md", "README.md", "checklist.md", "pricing.toml"}
ROOT_FILES |= {"pyproject.toml"}
REPO_PATH = re.compile(r"^(?:prompts|docs|bench|src|tests|\.ci)(?:/[\w.-]+)*/?$")
MODULE_PATH = re.compile(r"^[a-z_]+/(?:[a-z_]+\.py)?$")  # run/ledger.py, xai/: under src/knrun
MODULE = re.compile(r"^[a-z_]+\.py$")  # spool.py: somewhere in src/knrun

CLI = typer.main.get_command(app)


def without_code(text: str) -> str:
    return SPAN.sub("", FENCE.sub("", text))


def snippets(text: str) -> list[str]:
    """What a reader would type or look up: each code span, and each line of each code block."""
    blocks = FENCE.findall(text)
    found = [line for block in blocks for line in block.splitlines()]
    return found + [" ".join(span.split()) for span in SPAN.findall(FENCE.sub("", text))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in LINK.findall(without_code(text)):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            problems.append(f"link to {target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            problems.append(f"link to {target}: no heading #{anchor} in {path.name}")
    return problems


def command_problems(text: str) -> list[str]:
    """Each `knrun ...` names a command of the app, and each --option after it is one of its."""
    problems = []
    for snippet in snippets(text):
        for rest in COMMAND.findall(snippet.replace("\\|", "/")):
            words = rest.split()
            command = CLI
            path = ["knrun"]
            while words and WORD.match(words[0]) and isinstance(command, TyperGroup):
                sub = command.commands.get(words[0])
                if sub is None:
                    break
                command, path = sub, [*path, words.pop(0)]
            name = " ".join(path)
            takes_arguments = any(p.param_type_name == "argument" for p in command.params)
            if words and WORD.match(words[0]) and not takes_arguments:
                problems.append(f"`{name} {words[0]}`: {name} has no command {words[0]!r}")
            known = {"--help"}
            for param in command.params:
                known.update(param.opts + param.secondary_opts)
            for option in OPTION.findall(" ".join(words)):
                if option not in known:
                    problems.append(f"`{name} {option}`: {name} has no option {option}")
    return problems


def path_problems(text: str) -> list[str]:
    """Each repository path named in code (prompts/..., docs/..., src/..., run/ledger.py, the
    operator's files at the root) exists."""
    problems = []
    for snippet in snippets(text):
        for token in snippet.split():
            token = token.strip("()[],;:'\"")
            if token in ROOT_FILES or REPO_PATH.match(token):
                exists = (ROOT / token).exists()
            elif MODULE_PATH.match(token):
                exists = (PACKAGE / token).exists()
            elif MODULE.match(token):
                exists = any(PACKAGE.rglob(token))
            else:
                continue
            if not exists:
                problems.append(f"`{token}`: no such file in the repository")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    assert link_problems(page, page.read_text()) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_knrun_command_and_option_named_exists(page: Path) -> None:
    assert command_problems(page.read_text()) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_repository_path_named_exists(page: Path) -> None:
    assert path_problems(page.read_text()) == []


def test_the_checks_catch_a_bad_name() -> None:
    page = ROOT / "README.md"
    assert link_problems(page, "see [the job](docs/no-such-page.md)") != []
    assert link_problems(page, "see [codes](#no-such-heading)") != []
    assert link_problems(page, "see [the job](docs/job-file.md#no-such-heading)") != []
    assert link_problems(page, "[codes](#exit-codes), [job](docs/job-file.md#the-job-file)") == []
    assert command_problems("run `knrun frobnicate` first") != []
    assert command_problems("run `knrun pricing frobnicate`") != []
    assert command_problems("run `knrun status now`") != []
    assert command_problems("```sh\nknrun go --no-such-option\n```") != []
    assert command_problems("`knrun spool replay --max-spend 2`") != []  # go's, not spool's
    assert command_problems("`knrun go --batch [--no-wait]`, `cd ~/kn && knrun db import F`") == []
    assert command_problems("a span may wrap: `knrun go\n  --no-such-option`") != []
    assert command_problems("`.knrun/spool.sqlite`, `knrun_runs`, `src/knrun/sim/`") == []
    assert path_problems("`docs/no-such-page.md`") != []
    assert path_problems("`python bench/no_such_bench.py`") != []
    assert path_problems("`run/no_such_module.py`") != []
    assert path_problems("`prompts/kn-1.6.toml`, `run/ledger.py`, `spool.py`, `xai/`") == []


def test_every_docs_page_is_in_the_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    for page in PAGES[1:]:
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not list {page.name}"
