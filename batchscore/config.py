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

# Names that become path segments and Redis keys: never "." or "..", never a leading dot or dash.
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelArtifact(_Strict):
    uri: str = Field(description="path or file:// URI of the model artifact")
    format: Literal["onnx", "torchscript", "torch_export"]
    version: str = Field(min_length=1, description="model version recorded with every score")


class InputTable(_Strict):
    path: str
    format: Literal["parquet", "delta"] = "parquet"
    key: str = Field(min_length=1)
    features: list[str] | None = None
    feature_array: str | None = None
    feature_count: int | None = Field(default=None, gt=0)
    read: Literal["auto", "files", "spark"] = Field(
        default="auto", description="files: Python workers read the Parquet files themselves (local or "
        "mounted paths); spark: Spark's scan feeds the model; auto: files when possible")

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
    cluster: bool = Field(default=False, description="the URL points at a Redis Cluster node")
    gc_grace_seconds: float = Field(default=300.0, ge=0, description="a replaced version outlives its "
                                    "replacement this long before GC (must exceed readers' pointer cache TTL)")
    max_memory_fraction: float = Field(default=0.9, gt=0, le=1, description="refuse a publish that would "
                                       "take Redis past this share of maxmemory")
    lock_ttl_seconds: int = Field(default=120, ge=5, description="publish lock lifetime, renewed while running")
    allow_evicting_policy: bool = Field(default=False, description="publish even when maxmemory-policy is "
                                        "allkeys-* (Redis may then evict published scores to make room)")


class Outputs(_Strict):
    columns: list[str] = Field(default_factory=lambda: ["score"], min_length=1)
    delta: DeltaOutput
    redis: RedisOutput = Field(default_factory=RedisOutput)
    history: DeltaOutput | None = Field(default=None, description="date-partitioned table `batchscore backfill` "
                                        "writes (default: <delta.path>_history)")

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
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32", description="torch models: cast weights and inputs to this dtype (outputs stay float32); "
        "onnx: fp32 only (export the model in the precision wanted)")


class Level(_Strict):
    level: Literal["warn", "block"] = "block"


class RowCountRule(Level):
    tolerance: float = Field(default=0.0, ge=0, le=1, description="allowed relative difference")


class ColumnRule(Level):
    columns: list[str] | None = Field(default=None, min_length=1, description="output columns checked (default: all)")


class NullRateRule(ColumnRule):
    max: float = Field(default=0.0, ge=0, le=1, description="largest allowed share of null or NaN scores")


class _Bounds(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Any:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class RangeRule(ColumnRule, _Bounds):
    pass


class MeanRule(ColumnRule, _Bounds):
    max_shift: float | None = Field(default=None, gt=0, description="largest move from the reference mean, in reference std")

    @model_validator(mode="after")
    def _something(self) -> MeanRule:
        if self.min is None and self.max is None and self.max_shift is None:
            raise ValueError("give at least one of min, max, max_shift")
        return self


class StdRule(ColumnRule, _Bounds):
    min: float | None = Field(default=None, ge=0)
    max_change: float | None = Field(default=None, gt=0, description="largest relative change from the reference std")

    @model_validator(mode="after")
    def _something(self) -> StdRule:
        if self.min is None and self.max is None and self.max_change is None:
            raise ValueError("give at least one of min, max, max_change")
        return self


class QuantileBand(_Bounds):
    q: float = Field(gt=0, lt=1, description="the quantile, e.g. 0.5 for the median")

    @model_validator(mode="after")
    def _something(self) -> QuantileBand:
        if self.min is None and self.max is None:
            raise ValueError(f"quantile {self.q}: give min, max or both")
        return self


class QuantileRule(ColumnRule):
    bands: list[QuantileBand] = Field(min_length=1)


class ShareBand(_Bounds):
    min: float | None = Field(default=None, ge=0, le=1)
    max: float | None = Field(default=None, ge=0, le=1)


class ClassShareRule(ColumnRule):
    shares: dict[float, ShareBand] = Field(min_length=1, description="class value -> allowed share of the rows")


class _Thresholds(_Strict):
    @model_validator(mode="after")
    def _ordered(self) -> Any:
        warn, block = getattr(self, "warn"), getattr(self, "block")
        if warn is not None and block is not None and warn > block:
            raise ValueError(f"warn threshold {warn} is above block threshold {block}")
        return self


class PsiRule(_Thresholds):
    warn: float | None = Field(default=0.1, ge=0)
    block: float | None = Field(default=0.25, ge=0)


class KlRule(_Thresholds):
    # KL(candidate || reference) is about half the PSI (a symmetrised KL) for small shifts.
    warn: float | None = Field(default=0.05, ge=0)
    block: float | None = Field(default=0.125, ge=0)
    tail_holdout: float = Field(default=0.005, gt=0, lt=0.5, description="weight given to empty bins and tails")


class DriftRule(_Strict):
    enabled: bool = True
    columns: list[str] | None = Field(default=None, min_length=1)
    min_rows: int = Field(default=1000, ge=1, description="fewer rows (candidate or reference): drift is not judged")
    bins: int = Field(default=20, ge=2, le=200, description="bins frozen from the first reference's quantiles")
    reset_on_new_model_version: bool = Field(default=True, description="a new model version starts a new reference")
    psi: PsiRule = Field(default_factory=PsiRule)
    kl: KlRule = Field(default_factory=KlRule)


class Validation(_Strict):
    row_count: RowCountRule = Field(default_factory=RowCountRule)
    null_rate: NullRateRule = Field(default_factory=NullRateRule)
    range: RangeRule | None = None
    mean: MeanRule | None = None
    std: StdRule | None = None
    quantiles: QuantileRule | None = None
    class_share: ClassShareRule | None = None
    drift: DriftRule = Field(default_factory=DriftRule)


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

    @model_validator(mode="after")
    def _precision_fits_format(self) -> ModelConfig:
        if self.model.format == "onnx" and self.scoring.precision != "fp32":
            raise ValueError(
                f"scoring.precision: '{self.scoring.precision}' applies to torch models only (model.format is onnx); "
                f"export the ONNX model in {self.scoring.precision} instead (keeping float32 inputs/outputs), "
                "or use a torch format (model.format: torchscript|torch_export), or set scoring.precision: fp32"
            )
        return self

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
    fix("outputs", "history.path")
    fix("runtime", "report_dir")
    runtime = raw.setdefault("runtime", {})
    if isinstance(runtime, dict) and "report_dir" not in runtime:
        runtime["report_dir"] = str(Path(Runtime().report_dir).resolve())
    return raw


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if not err["loc"] and err["type"] == "value_error":  # a cross-field check: its message names the field
        return str(err["msg"]).removeprefix("Value error, ")
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
