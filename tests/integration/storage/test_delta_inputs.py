"""Delta inputs are read as Delta (through delta-rs's log, not a listing of Parquet files): column
mapping by physical names, partitioned tables, deletion vectors applied, the version read pinned in
the score report; on S3."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from deltalake import QueryBuilder

from batchscore import storage as st
from batchscore.config import load_model_config
from batchscore.jobs import _state as state
from batchscore.jobs import score as score_job
from batchscore.sinks import delta
from tests.integration.storage.conftest import delta_table, upload

pytestmark = [pytest.mark.integration, pytest.mark.spark]


def _model_scores(model: Path, table: pa.Table, feats: list[str]) -> dict[int, float]:
    import onnxruntime as ort

    x = np.column_stack([table[c].to_numpy() for c in feats]).astype(np.float32)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return dict(zip(table["user_id"].to_pylist(), out[:, 0].tolist(), strict=True))


@pytest.mark.parametrize("layout", ["column-mapping", "partitioned", "deletion-vectors", "feature-partition"])
def test_a_delta_input_on_s3_is_read_through_its_log(spark: Any, make_config: Any, s3_bucket: str,
                                                    s3_env: dict[str, str], tmp_path: Path, layout: str) -> None:
    from deltalake import write_deltalake

    local = yaml.safe_load(make_config(rows=1200).read_text())
    feats = local["input"]["features"]
    table = pq.read_table(local["input"]["path"])
    table = table.append_column("region", pa.array(["eu" if i % 3 else "us" for i in range(table.num_rows)]))
    if layout == "feature-partition":  # a feature kept as a partition value, not in the files: the tasks add it
        at = table.schema.get_field_index(feats[-1])
        table = table.set_column(at, feats[-1], pa.array([i % 3 - 1.0 for i in range(table.num_rows)],
                                                         table.schema.field(at).type))
    uri = f"{s3_bucket}/features-delta"
    opts = st.Storage().options(uri)
    half = table.num_rows // 2
    kw: dict[str, Any] = ({"configuration": {"delta.columnMapping.mode": "name"}} if layout == "column-mapping"
                          else {"partition_by": ["region"]} if layout == "partitioned"
                          else {"partition_by": [feats[-1]]} if layout == "feature-partition" else {})
    write_deltalake(uri, table.slice(0, half), storage_options=opts, **kw)
    write_deltalake(uri, table.slice(half), storage_options=opts, mode="append")
    version = 1
    if layout == "deletion-vectors":  # rows 5..44 of one file and row 0 of the other, marked deleted on S3
        from batchscore.testing.delta_dv import delete_rows

        fs, root = st.Storage().filesystem(uri)
        files = sorted(pa.table(delta_table(uri).get_add_actions(flatten=True))["path"].to_pylist())
        version = delete_rows(root, {files[0]: list(range(5, 45)), files[1]: [0]}, filesystem=fs)
        kept = pa.table(QueryBuilder().register("t", delta_table(uri)).execute("select user_id from t").read_all())
        assert kept.num_rows == table.num_rows - 41
        table = table.filter(pc.is_in(table["user_id"], kept["user_id"]))
    dt = delta_table(uri)
    if layout == "column-mapping":  # the files store col-<uuid> names, not the features' names
        first = dt.file_uris()[0]
        assert not set(feats) & set(st.parquet_file(first).schema_arrow.names)
    if layout == "feature-partition":
        assert all(feats[-1] not in st.parquet_file(u).schema_arrow.names for u in dt.file_uris())
    upload(Path(local["model"]["uri"]), f"{s3_bucket}/model.onnx", {})
    cfg_d = {**local, "model": {**local["model"], "uri": f"{s3_bucket}/model.onnx"},
             "input": {**local["input"], "path": uri, "format": "delta"},
             "outputs": {**local["outputs"], "delta": {"path": f"{s3_bucket}/pred"}},
             "runtime": {"report_dir": f"{s3_bucket}/runs"}}
    path = tmp_path / "delta-input.yaml"
    path.write_text(yaml.safe_dump(cfg_d))
    cfg = load_model_config(path)

    rep = score_job.score(spark, cfg, run_id="d1", run_date="2026-11-30")
    assert rep.input_delta_version == dt.version() == version  # the version read is pinned in the report
    assert state.read_report(cfg, "d1", "score")["input_delta_version"] == version
    assert rep.input_deleted_rows == (41 if layout == "deletion-vectors" else 0)
    staged = pa.concat_tables([st.parquet_file(u).read() for u in delta.stage(cfg.outputs.delta.path, "d1").uris()])
    got = dict(zip(staged["user_id"].to_pylist(), staged["score"].to_pylist(), strict=True))
    assert got == _model_scores(Path(local["model"]["uri"]), table, feats)  # every row once, the model's scores
