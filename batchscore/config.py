"""Typed model config: one YAML file per model, ``conf/models/<name>.yaml``.

Unknown keys and wrong types are refused with the file, the field and what was expected.
Secrets never live here: the Redis URL is read from the environment variable the config names.

Relative paths (``model.uri``, ``model.cache_dir``, ``input.path``, ``outputs.delta.path``,
``outputs.history.path``, ``runtime.report_dir``) resolve against the config's *project root*,
never against the working directory, so a scheduler, a worker or a shell started anywhere reads
and writes the same locations (see :func:`project_root`):

1. ``$BATCHSCORE_PROJECT_ROOT`` when set (it must be an absolute path);
2. else, for a config inside a ``conf/`` folder (``<root>/conf/<name>.yaml`` or
   ``<root>/conf/<any>/<name>.yaml``), the folder holding that ``conf/``: for
   ``conf/models/demo.yaml`` the repository root;
3. else the config file's own directory.

Values with a URI scheme (``models:/...``, ``s3://``, ``gs://``, ``hdfs://``, ``abfss://``) are kept
as they are (``s3a://`` becomes ``s3://``; see :mod:`batchscore.storage`); ``file:///abs/path``
becomes ``/abs/path`` (already absolute; a ``file:`` URI without an absolute path is refused).
``~`` expands to the home directory. The executors of a local run see absolute paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from batchscore.errors import ConfigError

# Names that become path segments and Redis keys: never "." or "..", never a leading dot or dash.
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A registered MLflow model: models:/<name>/<version> (a pinned version) or models:/<name>@<alias>.
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@\s]+)(?:/(?P<version>[1-9][0-9]*)|@(?P<alias>[A-Za-z0-9_-]+))$")


class RegistryRef(NamedTuple):
    """The parts of a ``models:/`` URI (exactly one of ``version`` and ``alias`` is set)."""

    name: str
    version: str | None
    alias: str | None


class ModelArtifact(_Strict):
    uri: str = Field(
        description="path or file:// URI of the model artifact, or a registered MLflow model: "
        "models:/<name>/<version> or models:/<name>@<alias>, resolved on the driver through "
        "MLFLOW_TRACKING_URI (batchscore.registry)"
    )
    format: Literal["onnx", "torchscript", "torch_export"]
    version: str = Field(min_length=1, description="model version recorded with every score")
    artifact_path: str | None = Field(
        default=None,
        description="models:/ URIs: the model file inside the model version's artifacts, when "
        "the default lookup (the flavour's file, else the one *.onnx / *.pt|*.pth / *.pt2 file) is not enough",
    )
    cache_dir: str | None = Field(
        default=None,
        description="models:/ URIs: where the driver keeps resolved artifacts as <sha256>.<ext>; "
        "a local folder every executor can read, or a store URI (s3://...) the executors fetch from (default: "
        "$BATCHSCORE_MODEL_CACHE_DIR, else <outputs.delta.path>/_models)",
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _registry_uri(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.startswith("models:") and "/models:/" in v:
            # A loader that took models:/x@y for a relative path made it <root>/models:/x@y: take it back.
            v = v[v.index("/models:/") + 1 :]
        if isinstance(v, str) and v.startswith("models:") and not _REGISTRY_URI.match(v):
            raise ValueError(
                "a registered model is models:/<name>/<version> or models:/<name>@<alias> (e.g. models:/churn@champion)"
            )
        return v

    @field_validator("artifact_path")
    @classmethod
    def _relative(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or v.startswith("/") or ".." in Path(v).parts):
            raise ValueError(
                "give a path relative to the model version's artifacts, without '..' (e.g. data/model.pt2)"
            )
        return v

    @model_validator(mode="after")
    def _registry_fields(self) -> ModelArtifact:
        if self.registry is None and (self.artifact_path or self.cache_dir):
            raise ValueError(
                "model.artifact_path and model.cache_dir apply to models:/ URIs only; "
                "remove them or set model.uri to models:/<name>/<version> or models:/<name>@<alias>"
            )
        return self

    @property
    def registry(self) -> RegistryRef | None:
        """The registered model ``uri`` names, or None when it is a path."""
        m = _REGISTRY_URI.match(self.uri)
        return RegistryRef(m["name"], m["version"], m["alias"]) if m else None


class InputTable(_Strict):
    path: str
    format: Literal["parquet", "delta"] = "parquet"
    key: str = Field(min_length=1)
    features: list[str] | None = None
    feature_array: str | None = None
    feature_count: int | None = Field(default=None, gt=0)
    on_invalid: Literal["fail", "quarantine"] = Field(
        default="fail",
        description="fail: a bad row fails the run (null key, short feature array); quarantine: rows with a null "
        "key, a null or non-finite feature (unless allow_nan), a feature array of the wrong length, or a "
        "non-finite model output go to outputs.quarantine and are left out of the publication",
    )
    allow_nan: bool = Field(
        default=False,
        description="on_invalid: quarantine: null/NaN/inf features are scored (as NaN) instead of quarantined",
    )
    read: Literal["auto", "files", "spark"] = Field(
        default="auto",
        description="files: Python workers read the Parquet files themselves (any store: local "
        "disk, s3://, gs://, ...); spark: Spark's scan feeds the model (object stores then need Spark's Hadoop "
        "connectors); auto: files when possible",
    )

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
    gc_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description="a replaced version outlives its "
        "replacement this long before GC (must exceed readers' pointer cache TTL)",
    )
    max_memory_fraction: float = Field(
        default=0.9, gt=0, le=1, description="refuse a publish that would take Redis past this share of maxmemory"
    )
    lock_ttl_seconds: int = Field(default=120, ge=5, description="publish lock lifetime, renewed while running")
    ttl_seconds: int | None = Field(
        default=None,
        ge=1,
        description="expire every published version's keys (data, meta, pointer) this long after its publish; "
        "each publish renews it, so a pipeline that stops publishing stops serving (missing rather than stale)",
    )
    allow_evicting_policy: bool = Field(
        default=False,
        description="publish even when maxmemory-policy is "
        "allkeys-* (Redis may then evict published scores to make room)",
    )
    load: Literal["auto", "full"] = Field(
        default="auto",
        description="auto: a publication that changed few entities (at most half) is loaded as a server-side copy "
        "of the served version plus the entities that differ (standalone Redis); full: always load every entity",
    )


class Outputs(_Strict):
    columns: list[str] = Field(default_factory=lambda: ["score"], min_length=1)
    delta: DeltaOutput
    redis: RedisOutput = Field(default_factory=RedisOutput)
    history: DeltaOutput | None = Field(
        default=None, description="date-partitioned table `batchscore backfill` writes (default: <delta.path>_history)"
    )
    quarantine: DeltaOutput | None = Field(
        default=None,
        description="input.on_invalid: quarantine: the table of rows left out, partitioned by run_id "
        "(default: <delta.path>_quarantine)",
    )

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
    incremental: bool = Field(
        default=False,
        description="reuse the last publication's score of every key whose features (float32 hash) and model "
        "artifact are unchanged; score only new and changed rows (`--full` rescores everything)",
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field(
        default="fp32",
        description="torch models: cast weights and inputs to this dtype (outputs stay float32); "
        "onnx: fp32 only (export the model in the precision wanted)",
    )


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
    max_shift: float | None = Field(
        default=None, gt=0, description="largest move from the reference mean, in reference std"
    )

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
        warn, block = getattr(self, "warn", None), getattr(self, "block", None)  # the subclasses' fields
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


class QuarantineRateRule(Level):
    max: float = Field(default=0.01, ge=0, le=1, description="largest allowed share of input rows quarantined")


class Validation(_Strict):
    row_count: RowCountRule = Field(default_factory=RowCountRule)
    quarantine_rate: QuarantineRateRule = Field(default_factory=QuarantineRateRule)
    null_rate: NullRateRule = Field(default_factory=NullRateRule)
    range: RangeRule | None = None
    mean: MeanRule | None = None
    std: StdRule | None = None
    quantiles: QuantileRule | None = None
    class_share: ClassShareRule | None = None
    drift: DriftRule = Field(default_factory=DriftRule)


class _AtLeast(_Thresholds):
    """Lower is worse: below ``warn`` warns, below ``block`` blocks."""

    @model_validator(mode="after")
    def _ordered(self) -> Any:
        warn, block = getattr(self, "warn", None), getattr(self, "block", None)
        if warn is not None and block is not None and warn < block:
            raise ValueError(f"warn threshold {warn} is below block threshold {block} (lower is worse here)")
        return self


class SpearmanRule(_AtLeast):
    warn: float | None = Field(default=0.9, ge=-1, le=1)
    block: float | None = Field(default=0.5, ge=-1, le=1)


class TopKRule(_AtLeast):
    share: float = Field(default=0.01, gt=0, le=0.5, description="the top share of rows compared (by score)")
    warn: float | None = Field(default=0.7, ge=0, le=1)
    block: float | None = Field(default=0.3, ge=0, le=1)


class AgreementRule(_AtLeast):
    warn: float | None = Field(default=0.95, ge=0, le=1)
    block: float | None = Field(default=0.8, ge=0, le=1)


class MeanShiftRule(_Thresholds):
    warn: float | None = Field(default=0.5, ge=0, description="|mean move| in champion std")
    block: float | None = Field(default=1.0, ge=0)


class Comparison(_Strict):
    """Champion vs one challenger on the same rows (see ``batchscore.validation.compare``)."""

    sample_size: int = Field(default=100_000, ge=100, description="rows sampled for Spearman, top-k and the plot")
    bins: int = Field(default=20, ge=2, le=200, description="bins from the champion's quantiles (PSI, KL)")
    psi: PsiRule = Field(default_factory=PsiRule)
    kl: KlRule = Field(default_factory=KlRule)
    spearman: SpearmanRule = Field(default_factory=SpearmanRule)
    mean_shift: MeanShiftRule = Field(default_factory=MeanShiftRule)
    top_k: TopKRule = Field(default_factory=TopKRule)
    agreement: AgreementRule | None = Field(
        default=None, description="label outputs: share of rows with the same label")


class Challenger(_Strict):
    name: str = Field(pattern=_NAME)
    model: ModelArtifact
    columns: list[str] | None = Field(default=None, min_length=1, description="default: outputs.columns")
    delta_path: str | None = Field(default=None, description="default: <outputs.delta.path>_challengers/<name>")
    validation: Validation | None = Field(default=None, description="default: the champion's validation rules")
    comparison: Comparison = Field(default_factory=Comparison)

    @field_validator("name")
    @classmethod
    def _not_champion(cls, v: str) -> str:
        if v == "champion":
            raise ValueError("'champion' names the model itself; give the challenger another name")
        return v


class Runtime(_Strict):
    report_dir: str = ".batchscore/runs"


class SparkSettings(_Strict):
    master: str = "local[2]"
    conf: dict[str, Annotated[str | int | float | bool, Field()]] = Field(default_factory=dict)


_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


def _storage_names(v: dict[str, str]) -> dict[str, str]:
    """``storage:``: option -> the *name* of the environment variable holding its value (never the
    value: secrets stay in the environment). Options not given are read from their standard
    variables (``AWS_ACCESS_KEY_ID`` ...), else from the instance/workload identity."""
    from batchscore.storage import ALL_OPTIONS

    for option, var in v.items():
        if option not in ALL_OPTIONS:
            raise ValueError(f"unknown storage option '{option}' (known: {', '.join(ALL_OPTIONS)})")
        if not isinstance(var, str) or not _ENV_NAME.match(var):
            raise ValueError(
                f"storage.{option}: give the name of an environment variable (like SCORING_S3_SECRET), "
                "never the value itself"
            )
    return v


class ModelConfig(_Strict):
    name: str = Field(pattern=_NAME)
    model: ModelArtifact
    input: InputTable
    outputs: Outputs
    scoring: Scoring = Field(default_factory=Scoring)
    validation: Validation = Field(default_factory=Validation)
    runtime: Runtime = Field(default_factory=Runtime)
    storage: dict[str, str] = Field(
        default_factory=dict,
        description="option -> name of the environment variable "
        "holding it, e.g. {AWS_ACCESS_KEY_ID: SCORING_S3_KEY_ID}; see batchscore.storage",
    )
    spark: SparkSettings = Field(default_factory=SparkSettings)
    challengers: list[Challenger] = Field(
        default_factory=list, description="models scored in the same pass and published in shadow (their own "
        "Delta table and Redis namespace), served only through a split (`batchscore split`)")
    source: str = Field(default="", exclude=True, description="the file this was loaded from")

    @model_validator(mode="after")
    def _challengers_fit(self) -> ModelConfig:
        names = [c.name for c in self.challengers]
        if len(set(names)) != len(names):
            raise ValueError(f"challengers: names must be unique, got {names}")
        if self.challengers and self.scoring.incremental:
            raise ValueError("scoring.incremental does not combine with challengers yet; turn one of them off")
        for c in self.challengers:
            if c.model.format == "onnx" and self.scoring.precision != "fp32":
                raise ValueError(f"challengers.{c.name}: scoring.precision '{self.scoring.precision}' applies to "
                                 "torch models only; export the ONNX model in that precision instead")
            if c.columns is not None and not all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", n) for n in c.columns):
                raise ValueError(f"challengers.{c.name}.columns must be identifiers, got {c.columns}")
        return self

    def challenger(self, name: str) -> ModelConfig:
        """The model config a challenger is scored, validated and published as: its own name
        (``<model>@<name>``: its Redis namespace and reports folder), artifact, output columns, Delta
        table and rules; the champion's input, scoring, storage and Redis settings."""
        found = [c for c in self.challengers if c.name == name]
        if not found:
            known = ", ".join(c.name for c in self.challengers) or "none"
            raise ConfigError(f"{self.source}: no challenger named '{name}' (challengers: {known})")
        c = found[0]
        outputs = self.outputs.model_copy(update={
            "columns": list(c.columns or self.outputs.columns),
            "delta": DeltaOutput(path=c.delta_path or challenger_delta_path(self.outputs.delta.path, c.name)),
            "history": None, "quarantine": None})
        return self.model_copy(update={"name": f"{self.name}@{c.name}", "model": c.model, "outputs": outputs,
                                       "validation": c.validation or self.validation, "challengers": []})

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: dict[str, str]) -> dict[str, str]:
        return _storage_names(v)

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

    @property
    def store(self) -> Any:
        """The :class:`batchscore.storage.Storage` every location of this config is reached with."""
        from batchscore.storage import Storage

        return Storage(env=tuple(sorted(self.storage.items()))).captured()

    def redis_url(self) -> str:
        """The Redis URL from the environment variable the config names (never logged)."""
        url = os.environ.get(self.outputs.redis.url_env)
        if not url:
            raise ConfigError(
                f"{self.source}: outputs.redis.url_env: environment variable "
                f"{self.outputs.redis.url_env} is not set; export it (e.g. redis://127.0.0.1:6379/0)"
            )
        return url


PROJECT_ROOT_ENV = "BATCHSCORE_PROJECT_ROOT"
# A URI scheme (RFC 3986): models:/x@y, s3://b/k, hdfs://nn/p, abfss://c@a/p, file:///p. One letter
# followed by ':' is not one (a Windows drive), nor is a name with a '/' before its first ':'.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
# The config fields holding a path or URI, as (section, dotted field).
_PATH_FIELDS = (
    ("model", "uri"),
    ("model", "cache_dir"),
    ("input", "path"),
    ("outputs", "delta.path"),
    ("outputs", "history.path"),
    ("outputs", "quarantine.path"),
    ("runtime", "report_dir"),
)


def challenger_delta_path(delta_path: str, name: str) -> str:
    return f"{delta_path.rstrip('/')}_challengers/{name}"


def _local_path(uri: str) -> str:
    """``file:///abs/p`` -> ``/abs/p``; anything else unchanged."""
    return uri.removeprefix("file://")


def project_root(config_path: str | os.PathLike[str]) -> Path:
    """The directory a config's relative paths resolve against, whatever the working directory:
    ``$BATCHSCORE_PROJECT_ROOT`` (absolute) when set; else the parent of the ``conf/`` folder that
    holds the config (``<root>/conf/x.yaml`` or ``<root>/conf/<dir>/x.yaml``); else the config's
    directory. ``config_path`` itself, when relative, is taken from the working directory (as a
    command-line argument is)."""
    env = os.environ.get(PROJECT_ROOT_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        if not root.is_absolute():
            raise ConfigError(
                f"{PROJECT_ROOT_ENV}={env!r}: give an absolute path (relative paths of model "
                "configs resolve against it, so it must not depend on the working directory)"
            )
        return Path(os.path.normpath(root))
    here = Path(os.path.abspath(config_path)).parent
    for folder in (here, here.parent):
        if folder.name == "conf":
            return folder.parent
    return here


def _resolve(value: str, root: Path, where: str) -> str:
    """One path field: URIs unchanged, ``file:///p`` -> ``/p``, relative paths under ``root``."""
    if value.startswith("file:"):
        local = value[len("file://") :] if value.startswith("file://") else ""
        if not local.startswith("/"):
            raise ConfigError(
                f"{where}: {value!r} is not a file URI with an absolute path; write "
                "file:///absolute/path, or a plain path (relative to the project root)"
            )
        return str(Path(local).resolve())
    if _SCHEME.match(value):
        if value.startswith("models:"):
            return value
        from batchscore.storage import normalize, scheme

        try:
            scheme(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        return normalize(value)  # s3a:// is s3://; s3://, gs://, abfss://, hdfs:// are not local paths
    return str((root / Path(value).expanduser()).resolve())


def _absolutize(raw: dict[str, Any], root: Path, source: str = "") -> dict[str, Any]:
    """Resolve the config's relative local paths against ``root`` (see :func:`project_root`);
    the default ``runtime.report_dir`` too. Values with a URI scheme are left as they are."""
    for section, field in _PATH_FIELDS:
        node: Any = raw.get(section)
        parts = field.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(parts[-1]), str) and node[parts[-1]]:
            node[parts[-1]] = _resolve(node[parts[-1]], root, f"{source}: {section}.{field}")
    for i, ch in enumerate(raw.get("challengers") or []):
        if not isinstance(ch, dict):
            continue
        spots: tuple[tuple[str | None, str], ...] = (("model", "uri"), ("model", "cache_dir"), (None, "delta_path"))
        for sub, name in spots:
            node = ch.get(sub) if sub is not None else ch
            if isinstance(node, dict) and isinstance(node.get(name), str) and node[name]:
                where = f"{source}: challengers[{i}].{'' if sub is None else sub + '.'}{name}"
                node[name] = _resolve(node[name], root, where)
    runtime = raw.setdefault("runtime", {})
    if isinstance(runtime, dict) and "report_dir" not in runtime:
        runtime["report_dir"] = _resolve(Runtime().report_dir, root, f"{source}: runtime.report_dir")
    return raw


def _describe(err: Mapping[str, Any]) -> str:
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
    """Load and validate ``path``; raise :class:`ConfigError` naming the file and field.

    Relative paths in it resolve against :func:`project_root` of ``path``, not the working directory.
    """
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
        return ModelConfig.model_validate({**_absolutize(raw, project_root(p), str(p)), "source": str(p)})
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{p}: {_describe(first)}{more}") from None
