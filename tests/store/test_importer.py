"""`db import`: JSONL and CSV in, typed columns, all-or-nothing on a bad row, re-import updates."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from knrun.errors import InputError
from knrun.job import JobSpec
from knrun.store.importer import import_units

HEADER = (
    "id,unit_code,title,application,elements,performance_criteria,knowledge_evidence,"
    "status,restricted_access\n"
)


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_jsonl_import_creates_a_typed_table(tmp_path: Path, job: JobSpec, units_file: Path) -> None:
    db = tmp_path / "store.sqlite"
    report = import_units(units_file, db, job)
    assert (report.rows, report.inserted, report.table_created) == (30, 30, True)
    types = {name: kind for _, name, kind, *_ in rows(db, "PRAGMA table_info(units)")}
    assert (
        types["id"] == "INTEGER"
        and types["restricted_access"] == "INTEGER"
        and types["title"] == "TEXT"
    )


def test_csv_numbers_become_numbers_so_the_where_clause_matches(
    tmp_path: Path, job: JobSpec
) -> None:
    source = tmp_path / "units.csv"
    source.write_text(
        HEADER + '1,BSB1,"Title, with comma",a,e,p,k,Current,0\n2,BSB2,t,a,e,p,k,Current,1\n'
    )
    db = tmp_path / "store.sqlite"
    import_units(source, db, job)
    assert rows(db, f"SELECT id FROM units WHERE {job.source.where}") == [(1,)]
    assert rows(db, "SELECT title FROM units WHERE id = 1") == [("Title, with comma",)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            HEADER + "1,B,t,a,e,p,k,Current,0\n2,B,t,a,e,p,k,Current\n",
            r"units.csv:3: wrong number of fields",
        ),
        ("id,unit_code\n1,B\n", r"units.csv:2: missing column\(s\) title, application"),
        (
            HEADER + "1,B,t,a,e,p,k,Current,0\n1,B,t,a,e,p,k,Current,0\n",
            r"units.csv:3: duplicate id '1'",
        ),
        (HEADER + ",B,t,a,e,p,k,Current,0\n", r"units.csv:2: empty id"),
        (
            HEADER.replace("status", "kn_status") + "1,B,t,a,e,p,k,Current,0\n",
            r"uses knrun's prefix",
        ),
        ("", r"empty CSV"),
    ],
)
def test_a_bad_csv_row_is_named_and_nothing_is_written(
    tmp_path: Path, job: JobSpec, content: str, message: str
) -> None:
    source = tmp_path / "units.csv"
    source.write_text(content)
    db = tmp_path / "store.sqlite"
    with pytest.raises(InputError, match=message):
        import_units(source, db, job)
    assert rows(db, "SELECT name FROM sqlite_master WHERE name = 'units'") == []


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"units.jsonl:31: not valid JSON"),
        ("[1, 2]", r"units.jsonl:31: each line must be a JSON object"),
        ('{"id": 99, "unit_code": {"a": 1}}', r"units.jsonl:31: unit_code: nested values"),
    ],
)
def test_a_bad_jsonl_line_leaves_an_existing_table_untouched(
    tmp_path: Path, job: JobSpec, units_file: Path, line: str, message: str
) -> None:
    db = tmp_path / "store.sqlite"
    import_units(units_file, db, job)
    with units_file.open("a") as handle:
        handle.write(line + "\n")
    with pytest.raises(InputError, match=message):
        import_units(units_file, db, job)
    assert rows(db, "SELECT COUNT(*) FROM units") == [(30,)]


def test_reimport_updates_inputs_and_keeps_knruns_columns(tmp_path: Path, job: JobSpec) -> None:
    db = tmp_path / "store.sqlite"
    first = tmp_path / "v1.csv"
    first.write_text(HEADER + "1,B,old title,a,e,p,k,Current,0\n")
    import_units(first, db, job)
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE units ADD COLUMN kn_prompt_version TEXT")
    conn.execute("UPDATE units SET kn_prompt_version = '1.6'")
    conn.commit()
    conn.close()
    second = tmp_path / "v2.csv"
    second.write_text(
        HEADER.strip() + ",notes\n1,B,new title,a,e,p,k,Current,0,n\n2,C,t,a,e,p,k,Current,0,\n"
    )
    report = import_units(second, db, job)
    assert (report.inserted, report.updated, report.columns_added) == (1, 1, ["notes"])
    assert rows(db, "SELECT id, title, kn_prompt_version FROM units ORDER BY id") == [
        (1, "new title", "1.6"),
        (2, "t", None),
    ]


def test_unknown_formats_and_missing_files(tmp_path: Path, job: JobSpec) -> None:
    with pytest.raises(InputError, match=r"unknown format \.xlsx"):
        import_units(tmp_path / "units.xlsx", tmp_path / "s.sqlite", job)
    with pytest.raises(InputError, match="file not found"):
        import_units(tmp_path / "nope.csv", tmp_path / "s.sqlite", job)
