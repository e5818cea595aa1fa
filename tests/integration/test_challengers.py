"""Champion and challengers in one pass: every arm's published scores equal its model's direct
output; a challenger blocked by the comparison is not published while the champion is.
Real Spark (local[2]), a real redis-server, Delta tables read back with deltalake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from deltalake import DeltaTable

from batchscore import ScoreReader
from batchscore import redis_layout as layout
from batchscore.config import load_model_config
from batchscore.jobs import _state as state
from batchscore.jobs import run as run_job
from batchscore.jobs.reports import ComparisonReport, PublishReport
from batchscore.testing.demo_data import write_features, write_onnx_mlp

pytestmark = [pytest.mark.integration, pytest.mark.spark]
FEATS = [f"f{i}" for i in range(8)]


def _direct(model: Path, feats: Path) -> dict[int, np.ndarray]:
    import onnxruntime as ort

    t = pq.read_table(feats)
    x = np.column_stack([t[c].to_numpy() for c in FEATS]).astype(np.float32)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return dict(zip(t["user_id"].to_pylist(), out, strict=True))


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    feats = write_features(tmp_path / "f.parquet", 3000, 8)
    champion = write_onnx_mlp(tmp_path / "champion.onnx", (8, 16, 1), seed=31)
    twin = write_onnx_mlp(tmp_path / "twin.onnx", (8, 16, 1), seed=31)  # same scores: passes every comparison
    other = write_onnx_mlp(tmp_path / "other.onnx", (8, 16, 2), seed=32)  # two outputs, unrelated scores
    cfg = {
        "name": "m",
        "model": {"uri": str(champion), "format": "onnx", "version": "v1"},
        "input": {"path": str(feats), "key": "user_id", "features": FEATS},
        "outputs": {"delta": {"path": str(tmp_path / "pred")}, "redis": {"key_prefix": "t"}},
        "scoring": {"batch_size": 500, "device": "cpu"},
        "validation": {"range": {"min": 0.0, "max": 1.0}},
        "runtime": {"report_dir": str(tmp_path / "runs")},
        "challengers": [
            {"name": "twin", "model": {"uri": str(twin), "format": "onnx", "version": "v2"}},
            {"name": "other", "model": {"uri": str(other), "format": "onnx", "version": "v3"},
             "columns": ["p", "q"], "comparison": {"spearman": {"warn": 0.999, "block": 0.99}}},
        ],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"cfg": path, "feats": feats, "champion": champion, "twin": twin, "other": other, "dir": tmp_path}


def test_one_pass_publishes_champion_and_passing_challengers_only(spark: Any, redis_url: str,
                                                                 world: dict[str, Any]) -> None:
    cfg = load_model_config(world["cfg"])
    rep = run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)
    assert rep.challengers["twin"].startswith("published in shadow")
    assert rep.challengers["other"].startswith("not published: comparison blocked: compare_spearman")

    want = _direct(world["champion"], world["feats"])
    pub = DeltaTable(cfg.outputs.delta.path).to_pyarrow_table()
    assert dict(zip(pub["user_id"].to_pylist(), pub["score"].to_numpy(), strict=True)) == {
        k: v[0] for k, v in want.items()}
    twin = cfg.challenger("twin")
    tw = DeltaTable(twin.outputs.delta.path).to_pyarrow_table()
    assert set(tw["model_version"].to_pylist()) == {"v2"}
    want_twin = _direct(world["twin"], world["feats"])
    assert dict(zip(tw["user_id"].to_pylist(), tw["score"].to_numpy(), strict=True)) == {
        k: v[0] for k, v in want_twin.items()}

    reader = ScoreReader(redis_url, prefix="t")
    keys = list(want)[:500]
    champ, shadow = reader.get_many("m", keys), reader.get_many("m@twin", keys)
    assert all(champ[str(k)].value == float(want[k][0]) for k in keys)  # type: ignore[union-attr]
    assert all(shadow[str(k)].value == float(want_twin[k][0]) for k in keys)  # type: ignore[union-attr]
    assert {s.model_version for s in shadow.values() if s} == {"v2"}

    other = cfg.challenger("other")
    assert not DeltaTable.is_deltatable(other.outputs.delta.path)  # blocked: never committed
    assert redis.Redis.from_url(redis_url).get(layout.pointer_key("t:m@other")) is None
    staged = pq.read_table(state.staged_path(other, "r1"))  # ... but staged and judged on the same rows
    want_other = _direct(world["other"], world["feats"])
    got = dict(zip(staged["user_id"].to_pylist(), zip(staged["p"].to_numpy(), staged["q"].to_numpy(),
                                                         strict=True), strict=True))
    assert got == {k: (v[0], v[1]) for k, v in want_other.items()}

    same = state.read(twin, "r1", ComparisonReport)
    diff = state.read(other, "r1", ComparisonReport)
    assert same is not None and diff is not None and same.passed and not diff.passed
    pair = same.pairs[0]
    assert pair["psi"] == pytest.approx(0.0, abs=1e-12) and pair["spearman"] == pytest.approx(1.0)
    assert pair["top_k_overlap"] == 1.0 and pair["mean_shift"] == 0.0 and pair["rows"] == 3000
    assert [(p["champion_column"], p["challenger_column"]) for p in diff.pairs] == [("score", "p")]
    assert Path(str(same.plot_png)).is_file() and json.loads(
        (Path(state.run_dir(twin, "r1")) / "comparison.json").read_text())["passed"] is True
    champion = json.loads((Path(state.run_dir(cfg, "r1")) / "validation.json").read_text())
    assert champion["challengers"] == {"twin": "passed", "other": champion["challengers"]["other"]}
    assert champion["comparisons"]["twin"]["pairs"][0]["champion_counts"] == pair["challenger_counts"]
    assert champion["comparisons"]["other"]["passed"] is False
    from PIL import Image  # the champion's validation.png carries both comparison plots below its own

    heights = [Image.open(p).height for p in (champion["histogram_png"], str(same.plot_png), str(diff.plot_png))]
    assert heights[0] > heights[1] + heights[2]


def test_a_challenger_rejected_by_its_validation_leaves_the_champion_published(
        spark: Any, redis_url: str, world: dict[str, Any]) -> None:
    raw = yaml.safe_load(world["cfg"].read_text())
    raw["challengers"][0]["validation"] = {"range": {"min": 0.0, "max": 0.01}}  # every twin score is above
    raw["challengers"] = raw["challengers"][:1]
    world["cfg"].write_text(yaml.safe_dump(raw))
    cfg = load_model_config(world["cfg"])
    rep = run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)
    assert rep.challengers["twin"].startswith("not published: validation rejected")
    assert DeltaTable(cfg.outputs.delta.path).version() == 0
    assert not DeltaTable.is_deltatable(cfg.challenger("twin").outputs.delta.path)


def _loose(name: str, model: Path) -> dict[str, Any]:
    off = {"warn": None, "block": None}
    return {"name": name, "model": {"uri": str(model), "format": "onnx", "version": f"{name}-1"},
            "comparison": {"psi": off, "kl": off, "spearman": off, "mean_shift": off, "top_k": off}}


def test_promote_serves_the_challenger_atomically_and_rollback_undoes_it(
        spark: Any, redis_url: str, world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from batchscore.jobs import promote as promote_job
    from batchscore.jobs import rollback as rollback_job

    alt = write_onnx_mlp(world["dir"] / "alt.onnx", (8, 16, 1), seed=33)  # other scores, no comparison bar
    raw = yaml.safe_load(world["cfg"].read_text())
    raw["challengers"] = [_loose("alt", alt), raw["challengers"][1]]
    world["cfg"].write_text(yaml.safe_dump(raw))
    cfg = load_model_config(world["cfg"])
    rep = run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)
    assert rep.challengers["alt"].startswith("published in shadow") and "blocked" in rep.challengers["other"]
    keys = list(range(0, 3000, 7))
    reader = ScoreReader(redis_url, prefix="t", pointer_ttl=0.0)
    before = reader.get_many("m", keys)

    capsys.readouterr()
    assert promote_job.main(["--model-config", str(world["cfg"]), "--challenger", "other"]) == 2
    assert "last comparison (run r1) was blocked" in capsys.readouterr().err
    assert reader.get_many("m", keys) == before  # nothing moved

    promote_job.promote(spark, cfg, challenger="alt", redis_url=redis_url)
    want_alt = _direct(alt, world["feats"])
    after = reader.get_many("m", keys)
    assert all(after[str(k)].value == float(want_alt[k][0]) for k in keys)  # type: ignore[union-attr]
    assert {s.model_version for s in after.values() if s} == {"alt-1"}
    dt = DeltaTable(cfg.outputs.delta.path)
    got = dt.to_pyarrow_table()
    assert dict(zip(got["user_id"].to_pylist(), got["score"].to_numpy(), strict=True)) == {
        k: v[0] for k, v in want_alt.items()}
    assert dt.history()[0]["batchscore.run_id"] == "promote-alt-r1"
    from batchscore.jobs import history
    from batchscore.jobs.targets import store_of

    shown = history.rows(cfg, store_of(cfg, redis_url))
    assert (shown[0]["kind"], shown[0]["run_id"], shown[0]["redis"]) == ("promote", "promote-alt-r1", "current")
    assert shown[0]["model_version"] == "alt-1" and shown[1]["kind"] == "publish"

    assert rollback_job.main(["--model-config", str(world["cfg"]), "--to-version", "0"]) == 0
    back = reader.get_many("m", keys)
    assert all(back[str(k)].value == before[str(k)].value for k in keys)  # type: ignore[union-attr]
    assert {s.model_version for s in back.values() if s} == {"v1"}


def test_split_cli_sets_weights_atomically_and_refuses_unpublished_arms(
        spark: Any, redis_url: str, world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from batchscore import splits
    from batchscore.cli import main as cli

    cfg = load_model_config(world["cfg"])
    run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)
    args = ["split", "--model-config", str(world["cfg"])]
    capsys.readouterr()
    assert cli([*args, "--set", "champion=90,other=10"]) == 2  # 'other' was blocked: nothing to serve
    assert "arm 'other' of 'm' has no published version" in capsys.readouterr().err
    assert cli([*args, "--set", "champion=90,nope=10"]) == 2
    assert cli([*args, "--set", "champion=90,twin=10,other=0"]) == 0
    r = redis.Redis.from_url(redis_url)
    first = splits.read_split(r, "t:m")
    assert first is not None and first.arms == (("champion", 90), ("twin", 10), ("other", 0)) and first.seq == 1
    assert cli([*args, "--set", "champion=50,twin=50"]) == 0
    second = splits.read_split(r, "t:m")
    assert second is not None and second.seq == 2 and second.salt == first.salt  # keys keep their arms
    with pytest.raises(splits.SplitConflict):  # a stale writer loses: compare-and-set on seq
        splits.set_split(r, "t:m", (("champion", 1),), expected=first)
    assert splits.read_split(r, "t:m") == second
    assert cli(args) == 0 and "split #2" in capsys.readouterr().out
    assert cli(["lookup", "--model-config", str(world["cfg"]), "--json", *map(str, range(40))]) == 0
    looked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {g["arm"] for g in looked} == {"champion", "twin"}  # 50/50 over 40 keys: both arms serve
    assert all(g["arm"] == splits.assign(second, g["key"]) for g in looked)
    assert {g["model_version"] for g in looked if g["arm"] == "twin"} == {"v2"}


def test_a_blocked_challenger_keeps_its_last_publication(spark: Any, redis_url: str, world: dict[str, Any]) -> None:
    alt = write_onnx_mlp(world["dir"] / "alt.onnx", (8, 16, 1), seed=34)
    raw = yaml.safe_load(world["cfg"].read_text())
    raw["challengers"] = [_loose("alt", alt)]
    world["cfg"].write_text(yaml.safe_dump(raw))
    cfg = load_model_config(world["cfg"])
    assert run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01",
                       redis_url=redis_url).challengers["alt"].startswith("published")
    side = cfg.challenger("alt")
    r = redis.Redis.from_url(redis_url)
    before = DeltaTable(side.outputs.delta.path).version(), r.get(layout.pointer_key("t:m@alt"))
    raw["challengers"][0]["comparison"]["spearman"] = {"warn": 0.9999, "block": 0.999}  # now it is blocked
    world["cfg"].write_text(yaml.safe_dump(raw))
    cfg = load_model_config(world["cfg"])
    rep = run_job.run(spark, cfg, run_id="r2", run_date="2026-12-02", redis_url=redis_url)
    assert rep.challengers["alt"].startswith("not published: comparison blocked")
    assert DeltaTable(cfg.outputs.delta.path).version() == 1  # the champion moved on
    assert (DeltaTable(side.outputs.delta.path).version(), r.get(layout.pointer_key("t:m@alt"))) == before


def test_the_separate_steps_judge_and_publish_challengers_as_run_does(
        spark: Any, redis_url: str, world: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from batchscore.jobs import publish as publish_job
    from batchscore.jobs import score as score_job
    from batchscore.jobs import validate as validate_job

    args = ["--model-config", str(world["cfg"]), "--run-id", "s1"]
    assert score_job.main(args) == 0 and validate_job.main(args) == 0  # the Airflow DAG's tasks
    out = capsys.readouterr().out
    assert "challenger twin" in out and "comparison blocked" in out
    assert publish_job.main(args) == 0
    cfg = load_model_config(world["cfg"])
    rep = state.read(cfg, "s1", PublishReport)
    assert rep is not None and rep.challengers["twin"].startswith("published in shadow")
    assert rep.challengers["other"].startswith("not published: comparison blocked")
    assert DeltaTable(cfg.challenger("twin").outputs.delta.path).version() == 0


def test_gc_sweeps_the_challengers_too(spark: Any, redis_url: str, world: dict[str, Any],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    from batchscore.jobs import gc as gc_job

    cfg = load_model_config(world["cfg"])
    run_job.run(spark, cfg, run_id="r1", run_date="2026-12-01", redis_url=redis_url)
    blocked = Path(state.staged_path(cfg.challenger("other"), "r1"))
    published = Path(state.staged_path(cfg.challenger("twin"), "r1"))
    assert blocked.is_dir() and published.is_dir()
    import time

    time.sleep(1.0)  # older than the retention below (0.36 s)
    assert gc_job.main(["--model-config", str(world["cfg"]), "--staged", "--staged-retention-hours", "0.0001"]) == 0
    assert "gc m@other" in capsys.readouterr().out
    assert not blocked.exists()  # never published: swept
    assert published.is_dir() and DeltaTable(cfg.challenger("twin").outputs.delta.path).to_pyarrow_table().num_rows
