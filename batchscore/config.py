"""Typed model config: one YAML file per model, ``conf/models/<name>.yaml``.

Unknown keys and wrong types are refused with the file, the field and what was expected.
Relative paths are resolved against the current working directory (the repo root when run with
``make``), so the executors of a local run see absolute paths. Secrets never live here: the Redis
URL is read from the environment variable the config names.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchscore.errors import ConfigError

_NAME = r"^[A-Za-z0-9_.-]+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelArtifact(_Strict):
    uri: str = Field(description="path or file:// URI of the model artifact")
    format: Literal["onnx", "torchscript"]
    version: str = Field(min_length=1, description="model version recorded with every score")


class InputTable(_Strict):
    path: str
    format: Literal["parquet", "delta"] = "parquet"
    key: str = Field(min_length=1)
    features: list[str] | None = None
    feature_array: str | None = None
    feature_count: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_feature_source(self) -> InputTable:
        if bool(self.features) == bool(self.feature_array):
            raise ValueError("give exactly one of 'features' (a list of columns) or 'feature_array'")
        if self.feature_array and not self.feature_count:
            raise ValueError("'feature_array' needs 'feature_count' (the array length)")
        return self

    @property
    def n_features(self) -> int:
        return len(self.features) if self.features else int(self.feature_count or 0)


class DeltaOutput(_Strict):
    path: str


class RedisOutput(_Strict):
    url_env: str = "BATCHSCORE_REDIS_URL"
    key_prefix: str = Field(default="bs", pattern=_NAME)
    keep_versions: int = Field(default=1, ge=0, description="old versions kept besides the current")


class Outputs(_Strict):
    columns: list[str] = Field(default_factory=lambda: ["score"], min_length=1)
    delta: DeltaOutput
    redis: RedisOutput = Field(default_factory=RedisOutput)

    @field_validator("columns")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", c)]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"output column names must be unique identifiers, got {v}")
        return v


class Scoring(_Strict):
    batch_size: int = Field(default=4096, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class Level(_Strict):
    level: Literal["warn", "block"] = "block"


class RowCountRule(Level):
    tolerance: float = Field(default=0.0, ge=0, le=1, description="allowed relative difference")


class NullRateRule(Level):
    max: float = Field(default=0.0, ge=0, le=1)


class RangeRule(Level):
    min: float | None = None
    max: float | None = None


class Validation(_Strict):
    row_count: RowCountRule = Field(default_factory=RowCountRule)
    null_rate: NullRateRule = Field(default_factory=NullRateRule)
    range: RangeRule | None = None


class Runtime(_Strict):
    report_dir: str = ".batchscore/runs"


class SparkSettings(_Strict):
    master: str = "local[2]"
    conf: dict[str, Annotated[str | int | float | bool, Field()]] = Field(default_factory=dict)


class ModelConfig(_Strict):
    name: str = Field(pattern=_NAME)
    model: ModelArtifact
    input: InputTable
    outputs: Outputs
    scoring: Scoring = Field(default_factory=Scoring)
    validation: Validation = Field(default_factory=Validation)
    runtime: Runtime = Field(default_factory=Runtime)
    spark: SparkSettings = Field(default_factory=SparkSettings)
    source: str = Field(default="", exclude=True, description="the file this was loaded from")

    @property
    def model_path(self) -> str:
        return _local_path(self.model.uri)

    def redis_url(self) -> str:
        """The Redis URL from the environment variable the config names (never logged)."""
        url = os.environ.get(self.outputs.redis.url_env)
        if not url:
            raise ConfigError(
                f"{self.source}: outputs.redis.url_env: environment variable "
                f"{self.outputs.redis.url_env} is not set; export it (e.g. redis://127.0.0.1:6379/0)"
            )
        return url


def _local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _absolutize(raw: dict[str, Any]) -> dict[str, Any]:
    """Resolve relative local paths against the working directory."""

    def fix(section: str, field: str) -> None:
        node = raw.get(section)
        for part in field.split(".")[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        last = field.split(".")[-1]
        if isinstance(node, dict) and isinstance(node.get(last), str):
            value = node[last]
            if "://" not in value or value.startswith("file://"):
                node[last] = str(Path(_local_path(value)).expanduser().resolve())

    fix("model", "uri")
    fix("input", "path")
    fix("outputs", "delta.path")
    fix("runtime", "report_dir")
    runtime = raw.setdefault("runtime", {})
    if isinstance(runtime, dict) and "report_dir" not in runtime:
        runtime["report_dir"] = str(Path(Runtime().report_dir).resolve())
    return raw


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown field '{loc}' (remove it or fix its spelling)"
    if err["type"] == "missing":
        return f"missing required field '{loc}'"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
    return f"field '{loc}': {err['msg']} (got {shown})"


def load_model_config(path: str | os.PathLike[str]) -> ModelConfig:
    """Load and validate ``path``; raise :class:`ConfigError` naming the file and field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: model config not found; pass --model-config conf/models/<name>.yaml")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of fields at the top level, got {type(raw).__name__}")
    try:
        return ModelConfig.model_validate({**_absolutize(raw), "source": str(p)})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{p}: {_describe(first)}{more}") from None
