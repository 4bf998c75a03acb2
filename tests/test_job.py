"""The job spec: validation with `file: field: problem`, the schema, the reply model, rendering."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import EXAMPLE_JOB
from knrun.errors import ConfigError
from knrun.job import JobSpec, find_job_path, load_job

VALID_REPLY = {
    "overview": "o",
    "key_knowledge": "k",
    "workplace_application": "w",
    "worked_example": "e",
    "common_mistakes": "c",
    "self_check": "s",
}


def write_job(tmp_path: Path, edit: str = "", replace: tuple[str, str] | None = None) -> Path:
    text = EXAMPLE_JOB.read_text()
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    path = tmp_path / "job.toml"
    path.write_text(text + edit)
    return path


def test_example_job_loads(job: JobSpec) -> None:
    assert (job.name, job.version, job.model) == ("kn", "1.6", "grok-4.3")
    assert len(job.outputs) == 6
    assert job.source.where == "status = 'Current' AND restricted_access = 0"


def test_schema_lists_every_output_as_required_and_closed(job: JobSpec) -> None:
    schema = job.response_schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["required"] == list(VALID_REPLY)
    assert schema["properties"]["overview"]["type"] == "string"
    assert schema["properties"]["overview"]["description"].startswith("Two or three paragraphs")


def test_output_model_accepts_a_good_reply_and_rejects_bad_ones(job: JobSpec) -> None:
    job.output_model.model_validate(VALID_REPLY)
    missing = {k: v for k, v in VALID_REPLY.items() if k != "overview"}
    extra, empty, wrong_type = (
        VALID_REPLY | {"extra": "x"},
        VALID_REPLY | {"overview": ""},
        VALID_REPLY | {"overview": 3},
    )
    for bad in (extra, missing, empty, wrong_type):
        with pytest.raises(ValidationError):
            job.output_model.model_validate(bad)


def test_render_fills_the_templates_and_keeps_the_system_prompt_first(job: JobSpec) -> None:
    unit = {
        "id": 1,
        "unit_code": "BSBWHS411",
        "title": "Implement WHS",
        "application": "a",
        "elements": "1. Do",
        "performance_criteria": "1.1 Do it",
        "knowledge_evidence": None,
    }
    system, user = job.render(unit)
    assert system["role"] == "system" and "$" not in system["content"]
    assert user["role"] == "user"
    assert (
        "Unit code: BSBWHS411" in user["content"] and "Knowledge evidence:\n\n" in user["content"]
    )


def test_unit_text_is_never_reinterpreted_as_a_template(job: JobSpec) -> None:
    unit = {c: "$title ${id}" for c in job.source.columns} | {"id": 7}
    _, user = job.render(unit)
    assert "Unit code: $title ${id}" in user["content"]


def test_prompt_hash_is_stable_and_changes_with_any_edit(tmp_path: Path, job: JobSpec) -> None:
    assert load_job(EXAMPLE_JOB).prompt_hash == job.prompt_hash
    edited = load_job(write_job(tmp_path, replace=("Write the knowledge notes", "Write the notes")))
    assert edited.prompt_hash != job.prompt_hash
    assert re.fullmatch(r"[0-9a-f]{16}", job.prompt_hash)


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (
            ("temperature = 0.3", "temperature = 7"),
            r"job.toml: temperature: Input should be less than or equal to 2",
        ),
        (
            ('table = "units"', 'table = "units; DROP TABLE x"'),
            r"job.toml: source.table: .* is not a plain SQL identifier",
        ),
        (('id = "id"', 'idd = "id"'), r"source.idd: unknown key \(a typo\?\)"),
        (
            ('restricted_access = 0"', 'restricted_access = 0; DELETE FROM units"'),
            r"where: must be one SQL expression",
        ),
        (("Title: $title", "Title: $titel"), r"prompt.user: \$titel not in source.columns"),
        (("Title: $title", "Costs $5"), r"prompt.user: a '\$' is neither"),
        (('name = "overview"', 'name = "self_check"'), r"outputs: two outputs have the same name"),
        (
            ('name = "overview"', 'name = "overview"\ncolumn = "title"'),
            r"would overwrite input column\(s\) title",
        ),
    ],
)
def test_bad_job_files_say_file_field_problem(tmp_path: Path, replace, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_job(write_job(tmp_path, replace=replace))


def test_semicolons_inside_string_literals_are_allowed(tmp_path: Path) -> None:
    path = write_job(tmp_path, replace=("status = 'Current'", "status = 'Current; really'"))
    assert load_job(path).source.where.startswith("status = 'Current; really'")


def test_unreadable_and_invalid_toml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_job(bad)


def test_job_discovery(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    with pytest.raises(ConfigError, match="no job file"):
        find_job_path(None, None, prompts)
    prompts.mkdir()
    (prompts / "a.toml").write_text("")
    assert find_job_path(None, None, prompts) == prompts / "a.toml"
    (prompts / "b.toml").write_text("")
    with pytest.raises(ConfigError, match="several job files"):
        find_job_path(None, None, prompts)
    assert find_job_path(None, "prompts/b.toml", prompts) == Path("prompts/b.toml")
    assert find_job_path(Path("x.toml"), "prompts/b.toml", prompts) == Path("x.toml")
