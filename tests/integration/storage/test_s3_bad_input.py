"""Bad object-store input is refused with one line naming the URI and the fix, exit 2, and
publishes nothing (the Delta version and the Redis pointer stay where they were): a missing
bucket, a wrong credential, a missing object, a Delta input with an unreadable protocol feature.
Secrets never appear in the output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import yaml

from batchscore import redis_layout as layout
from batchscore import storage as st
from batchscore.jobs import run as run_job
from tests.integration.storage.conftest import delta_table, published_baseline, small_project
from tests.integration.test_bad_input import (
    _variant,  # the same world-dict variant writer
)

pytestmark = [pytest.mark.integration, pytest.mark.spark]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, spark: Any, s3_server: Any) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("s3bad")
    mp = pytest.MonkeyPatch()
    for k, v in s3_server.env().items():
        mp.setenv(k, v)
    bucket = s3_server.make_bucket("bad-input")
    base = small_project(d, bucket, "bad", rows=400)
    # A Delta input whose protocol needs a reader feature nobody implements.
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    write_deltalake(f"{bucket}/future", pq.read_table(d / "good.parquet"), storage_options=st.Storage().options(bucket))
    log = f"{bucket}/future/_delta_log/00000000000000000001.json"
    st.write_bytes(log, (json.dumps({"protocol": {"minReaderVersion": 3, "minWriterVersion": 7,
                                                  "readerFeatures": ["quantumEncoding"],
                                                  "writerFeatures": ["quantumEncoding"]}}) + "\n"
                         + json.dumps({"commitInfo": {"operation": "SET TBLPROPERTIES"}}) + "\n").encode())
    with published_baseline(d, base, mp) as url:
        yield {"dir": d, "base": base, "url": url, "bucket": bucket, "secret": s3_server.secret_key}
    mp.undo()


def _state(world: dict[str, Any]) -> tuple[int, bytes | None]:
    r = redis.Redis.from_url(world["url"])
    return delta_table(f"{world['bucket']}/pred").version(), r.get(layout.pointer_key("t:bad"))


CASES = {
    "missing bucket (input)": (lambda w: _variant(w, "nobucket", input={"path": "s3://no-such-bucket/features"}),
                               ["s3://no-such-bucket/features", "bucket 'no-such-bucket' does not exist", "create it"]),
    "missing bucket (model)": (lambda w: _variant(w, "nobucket2", model={"uri": "s3://no-such-bucket/model.onnx"}),
                               ["s3://no-such-bucket/model.onnx", "does not exist"]),
    "missing object (model)": (lambda w: _variant(w, "nomodel", model={"uri": f"{w['bucket']}/gone.onnx"}),
                               ["gone.onnx not found", "model.uri"]),
    "missing object (input)": (lambda w: _variant(w, "noinput", input={"path": f"{w['bucket']}/nothing"}),
                               ["/nothing", "no Parquet files there", "input.path"]),
    "unreadable Delta protocol feature": (
        lambda w: _variant(w, "future", input={"path": f"{w['bucket']}/future", "format": "delta"}),
        ["/future", "quantumEncoding", "export the features"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_store_input_is_refused_and_publishes_nothing(world: dict[str, Any], case: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    make, needles = CASES[case]
    before = _state(world)
    capsys.readouterr()
    assert run_job.main(["--model-config", str(make(world)), "--run-id", f"x{abs(hash(case))}"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("batchscore: error:")]
    assert len(err) == 1 and all(n in err[0] for n in needles), err
    assert world["secret"] not in captured.err + captured.out
    assert _state(world) == before


def test_a_wrong_credential_is_refused_without_showing_it(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    before = _state(world)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-xyz")
    capsys.readouterr()
    assert run_job.main(["--model-config", str(world["dir"] / "base.yaml"), "--run-id", "badcred"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("batchscore: error:")]
    assert len(err) == 1 and "refused the credentials" in err[0] and "AWS_SECRET_ACCESS_KEY" in err[0], err
    assert "not-the-secret-xyz" not in captured.err + captured.out
    monkeypatch.undo()
    assert _state(world) == before


def test_storage_section_names_variables_never_values(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """``storage:`` maps options to other variables (here the only place the key is); a value
    pasted there instead of a variable name is refused."""
    monkeypatch.setenv("SCORING_S3_SECRET", world["secret"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    ok = _variant(world, "mapped")
    cfg = yaml.safe_load(ok.read_text())
    cfg["storage"] = {"AWS_SECRET_ACCESS_KEY": "SCORING_S3_SECRET"}
    ok.write_text(yaml.safe_dump(cfg))
    assert run_job.main(["--model-config", str(ok), "--run-id", "mapped"]) == 0
    cfg["storage"] = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"}
    ok.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert run_job.main(["--model-config", str(ok), "--run-id", "pasted"]) == 2
    err = capsys.readouterr().err
    assert "give the name of an environment variable" in err and "wJalrXUtnFEMI" not in err
