"""The job spec (`prompts/<job>.toml`): one model, one prompt version, its rows and outputs."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from knrun.errors import ConfigError
from knrun.sqltext import IDENTIFIER, where_problem
from knrun.tomlfile import problems, read_toml


def _sql_identifier(value: str) -> str:
    # Identifiers are interpolated into SQL text (always double-quoted), so only plain names pass.
    if not IDENTIFIER.match(value):
        raise ValueError(f"{value!r} is not a plain SQL identifier (letters, digits, _)")
    return value


def _column_prefix(value: str) -> str:
    if value and not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,30}$", value):
        raise ValueError(f"{value!r} is not a valid column prefix (letters, digits, _)")
    return value


Identifier = Annotated[str, AfterValidator(_sql_identifier)]
OutputType = Literal["string", "integer", "number", "boolean", "string_list"]

_JSON_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "string_list": {"type": "array", "items": {"type": "string"}},
}
_SQL_TYPES = {
    "string": "TEXT",
    "integer": "INTEGER",
    "number": "REAL",
    "boolean": "INTEGER",
    "string_list": "TEXT",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutputField(_Strict):
    name: Identifier
    type: OutputType = "string"
    description: str = ""
    column: Identifier | None = None  # default: the source prefix + name
    min_length: int = Field(default=1, ge=0)  # strings shorter than this are a failed unit

    @property
    def sql_type(self) -> str:
        return _SQL_TYPES[self.type]

    def json_schema(self) -> dict[str, Any]:
        schema = dict(_JSON_TYPES[self.type])
        if self.description:
            schema["description"] = self.description
        return schema

    def python_annotation(self) -> Any:
        if self.type == "string":
            return Annotated[str, Field(min_length=self.min_length)]
        return {"integer": int, "number": float, "boolean": bool, "string_list": list[str]}[
            self.type
        ]

    def to_column_value(self, value: Any) -> str | int | float | None:
        """The value as stored: lists as JSON text, booleans as 0/1."""
        if self.type == "string_list":
            return json.dumps(value, ensure_ascii=False)
        if self.type == "boolean":
            return int(bool(value))
        return value  # type: ignore[no-any-return]


class Source(_Strict):
    table: Identifier
    id: Identifier
    columns: list[Identifier] = Field(min_length=1)
    where: str = "1 = 1"
    prefix: Annotated[str, AfterValidator(_column_prefix)] = "kn_"

    @model_validator(mode="after")
    def _check(self) -> Source:
        if len(set(self.columns)) != len(self.columns):
            raise ValueError("columns: a column is listed twice")
        if not self.where.strip():
            raise ValueError("where: is empty (use '1 = 1' to take every row)")
        problem = where_problem(self.where)
        if problem is not None:
            raise ValueError(f"where: {problem}")
        return self


class Prompt(_Strict):
    system: str = Field(min_length=1)
    user: str = Field(min_length=1)


class Estimate(_Strict):
    # Output tokens per unit (visible + reasoning) until the job has its own history in the store.
    output_tokens: int = Field(default=2000, gt=0)
    # Finished units needed before the store's averages replace `output_tokens`. 10 = one
    # canary: after a canary, the next preflight estimates from real replies.
    min_history: int = Field(default=10, gt=0)


class JobSpec(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    version: Annotated[str, Field(min_length=1, max_length=32)]
    model: Annotated[str, Field(min_length=1)]
    temperature: float = Field(default=0.3, ge=0, le=2)
    max_output_tokens: int = Field(default=8000, gt=0)
    # Reasoning models can think for minutes, and a request given up on is still billed: wait.
    timeout_s: float = Field(default=600, gt=0)
    # Sent only when set (grok-4.20 and older refuse the parameter; grok-4.5/4.6 default to
    # "high", the dearest). Which values a model takes is the provider's business: not checked.
    reasoning_effort: Annotated[str, Field(min_length=1, max_length=16)] | None = None
    source: Source
    outputs: list[OutputField] = Field(min_length=1)
    prompt: Prompt
    estimate: Estimate = Estimate()

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        names = [field.name for field in self.outputs]
        if len(set(names)) != len(names):
            raise ValueError("outputs: two outputs have the same name")
        columns = [self.output_column(field) for field in self.outputs]
        if len(set(columns)) != len(columns):
            raise ValueError("outputs: two outputs write the same column")
        inputs = {self.source.id, *self.source.columns}
        clash = sorted(inputs.intersection(columns))
        if clash:
            raise ValueError(f"outputs: would overwrite input column(s) {', '.join(clash)}")
        allowed = {self.source.id, *self.source.columns}
        for label, text in (
            ("prompt.system", self.prompt.system),
            ("prompt.user", self.prompt.user),
        ):
            template = string.Template(text)
            if not template.is_valid():
                raise ValueError(f"{label}: a '$' is neither $column nor $$ (write $$ for '$')")
            unknown = sorted(set(template.get_identifiers()) - allowed)
            if unknown:
                raise ValueError(
                    f"{label}: ${', $'.join(unknown)} not in source.columns or source.id"
                )
        return self

    # -- derived views --------------------------------------------------------------------------

    def output_column(self, field: OutputField) -> str:
        return field.column or f"{self.source.prefix}{field.name}"

    @cached_property
    def response_schema(self) -> dict[str, Any]:
        """The JSON Schema sent as `response_format` (structured outputs). Built once."""
        return {
            "type": "object",
            "properties": {field.name: field.json_schema() for field in self.outputs},
            "required": [field.name for field in self.outputs],
            "additionalProperties": False,
        }

    @cached_property
    def output_model(self) -> type[BaseModel]:
        """A pydantic model that validates the model's reply against the outputs."""
        fields: dict[str, Any] = {
            field.name: (field.python_annotation(), ...) for field in self.outputs
        }
        return create_model(
            self.schema_name,
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )

    @property
    def schema_name(self) -> str:
        """The response schema's name, as sent in `response_format`."""
        return f"{self.name.replace('-', '_').replace('.', '_')}_output"

    @cached_property
    def prompt_hash(self) -> str:
        """Changes with any edit that changes what is sent or which rows are processed."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @cached_property
    def request_hash(self) -> str:
        """Changes only with what is sent to the model: a failure that depends on the request
        (truncated, refused, off-schema, too long) is worth retrying only once this changes."""
        sent = {
            "model": self.model,
            "temperature": self.temperature,
            "max_output_tokens": self.max_output_tokens,
            "reasoning_effort": self.reasoning_effort,
            "prompt": self.prompt.model_dump(),
            "schema": self.response_schema,
        }
        canonical = json.dumps(sent, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @cached_property
    def _templates(self) -> tuple[string.Template, string.Template]:
        return string.Template(self.prompt.system), string.Template(self.prompt.user)

    @cached_property
    def shared_prefix(self) -> str:
        """The system prompt when it is the same for every unit (no placeholders): the prefix
        xAI's prompt cache can serve for all of them."""
        system = self._templates[0]
        return "" if system.get_identifiers() else system.template

    def render(self, unit: Mapping[str, Any]) -> list[dict[str, str]]:
        """Chat messages for one unit; the system prompt first, so units share a cached prefix."""
        values = {key: "" if value is None else str(value) for key, value in unit.items()}
        system, user = self._templates
        return [
            {"role": "system", "content": system.substitute(values)},
            {"role": "user", "content": user.substitute(values)},
        ]


def load_job(path: Path) -> JobSpec:
    """Read and validate a job file; every problem is reported as `file: field: problem`."""
    data = read_toml(path, "job file")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise problems(path, exc) from None


def find_job_path(explicit: Path | None, from_env: str | None, prompts_dir: Path) -> Path:
    """`--job`, else KNRUN_JOB, else the only job file in `prompts/`."""
    if explicit is not None:
        return explicit
    if from_env:
        return Path(from_env)
    candidates = sorted(prompts_dir.glob("*.toml")) if prompts_dir.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(
            f"no job file: pass --job PATH, set KNRUN_JOB, or add {prompts_dir}/*.toml"
        )
    names = ", ".join(str(candidate) for candidate in candidates)
    raise ConfigError(f"several job files ({names}): pick one with --job or KNRUN_JOB")
