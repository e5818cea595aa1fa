"""The reports the steps hand each other, typed: what ``score``, ``validate``, ``publish`` and ``run``
return and write as ``<step>.json`` beside the run (``runtime.report_dir/<model>/<run_id>/``).

The JSON is the contract with the Airflow environment and any other reader (it never imports
this module): :meth:`Report.to_json` writes exactly the field names below; :meth:`Report.from_json`
reads a report back, ignoring keys it does not know (a report written by a newer batchscore) and
naming the missing ones when a field without a default is absent. A typed field of its own (the
validation :class:`~batchscore.validation.profile.Profile`, also stored in the Delta commit as the
next run's drift reference) goes through that type's own ``to_json``/``from_json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any, ClassVar, Self

from batchscore.errors import PublishRefusedError
from batchscore.validation.profile import Profile

__all__ = ["ComparisonReport", "PublishReport", "Report", "RunReport", "ScoreReport", "ValidationReport"]


@dataclass(frozen=True, kw_only=True)
class Report:
    """Base of the step reports: a JSON round trip."""

    STEP: ClassVar[str] = ""

    #: fields whose value is a typed object with its own JSON round trip (name -> its class)
    NESTED: ClassVar[dict[str, Any]] = {}

    def to_json(self) -> dict[str, Any]:
        return {f.name: (v.to_json() if f.name in self.NESTED else v)
                for f in dataclasses.fields(self) for v in (getattr(self, f.name),)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = "") -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise PublishRefusedError(
                f"{where or cls.STEP + '.json'}: the {cls.STEP} report lacks {', '.join(missing)} (written by another "
                f"batchscore version or edited); rerun `batchscore {'score' if cls.STEP == 'score' else cls.STEP}` "
                "for this run")
        return cls(**{k: (cls.NESTED[k].from_json(v) if k in cls.NESTED else v)
                      for k, v in data.items() if k in known})


@dataclass(frozen=True, kw_only=True)
class ScoreReport(Report):
    """What ``batchscore score`` staged: the rows, their digest, the model that scored them."""

    STEP: ClassVar[str] = "score"
    input_rows: int
    digest: str
    model: str = ""
    run_id: str = ""
    run_date: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    registry: dict[str, Any] | None = None  # models:/ URIs: name, version, alias, run id (batchscore.registry)
    staged_path: str = ""
    staged_rows: int = 0
    staged_files: int = 0
    staged_bytes: int = 0
    input_delta_version: int | None = None  # the Delta input's version read (pinned)
    input_deleted_rows: int = 0  # rows of the Delta input its deletion vectors removed (not scored)
    model_loads: int = 0
    model_load_seconds: float = 0.0
    model_devices: list[str] = field(default_factory=list)  # the devices the executors' loads used
    seconds: float = 0.0
    scored_at: str | None = None
    # input.on_invalid: quarantine: rows left out, by reason, and where they went
    quarantined_rows: int = 0
    quarantine: dict[str, int] = field(default_factory=dict)
    quarantine_table: str | None = None
    quarantine_delta_version: int | None = None
    # scoring.incremental: how the rows were obtained ("incremental", or why everything was scored)
    scoring_mode: str = "full"
    rows_reused: int = 0
    rows_rescored: int = 0
    rows_new: int = 0
    rows_dropped: int = 0
    reused_from_delta_version: int | None = None


@dataclass(frozen=True, kw_only=True)
class ValidationReport(Report):
    """The gate's verdict on exactly the staged content of ``digest``."""

    STEP: ClassVar[str] = "validation"
    NESTED: ClassVar[dict[str, Any]] = {"profile": Profile}
    passed: bool
    digest: str
    profile: Profile = field(default_factory=Profile)
    model: str = ""
    run_id: str = ""
    model_version: str | None = None
    rows_judged: int = 0
    mode: str = "absolute-only"  # or "drift" (judged against the published reference)
    mode_reason: str | None = None
    reference: dict[str, Any] | None = None  # the published run judged against: run_id, delta_version
    rules: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)
    histogram_png: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    challengers: dict[str, str] = field(default_factory=dict)  # name -> passed, or why it will not be published
    comparisons: dict[str, Any] = field(default_factory=dict)  # name -> verdict, metrics and histograms per pair


@dataclass(frozen=True, kw_only=True)
class PublishReport(Report):
    """What ``batchscore publish`` made visible: the Delta version and the Redis version served."""

    STEP: ClassVar[str] = "publish"
    run_id: str
    rows: int
    delta_version: int | None
    redis_version: str
    model: str = ""
    publication: int | None = None
    digest: str = ""
    previous_redis_version: str | None = None
    gc_versions: list[str] = field(default_factory=list)
    already_published: bool = False
    seconds: float = 0.0
    challengers: dict[str, str] = field(default_factory=dict)  # name -> published in shadow, or why not
    #: how Redis got the version: "full" (every entity from the executors), "patch of <version>: <n>
    #: written, <m> removed" (outputs.redis.load: auto), or "reused" (a retry found it loaded)
    redis_load: str = "reused"


@dataclass(frozen=True, kw_only=True)
class RunReport(Report):
    """``batchscore run``: the three steps of one run in one application."""

    STEP: ClassVar[str] = "run"
    run_id: str
    rows: int
    delta_version: int | None
    redis_version: str
    model: str = ""
    run_date: str | None = None
    model_loads: int = 0
    model_load_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step: score, validate, publish
    challengers: dict[str, str] = field(default_factory=dict)  # name -> what happened to it (published, blocked)


@dataclass(frozen=True, kw_only=True)
class ComparisonReport(Report):
    """Champion vs one challenger on the same rows (``comparison.json`` in the challenger's run folder)."""

    STEP: ClassVar[str] = "comparison"
    passed: bool
    model: str = ""
    challenger: str = ""
    run_id: str = ""
    champion_digest: str = ""
    challenger_digest: str = ""
    pairs: list[dict[str, Any]] = field(default_factory=list)  # champion column, challenger column, metrics
    rules: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)
    plot_png: str | None = None
    seconds: float = 0.0
