"""Executors fetch a model artifact from its URI once into a local content-addressed cache,
checked against its sha256: a second job reuses it, a damaged copy is never trusted."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchscore import storage as st
from batchscore.errors import ModelError
from batchscore.udfs.model_ref import hash_bytes, read_artifact

pytestmark = [pytest.mark.integration]


def test_the_artifact_is_fetched_once_and_verified(s3_bucket: str, s3_env: dict[str, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHSCORE_ARTIFACT_CACHE", str(tmp_path / "cache"))
    data = b"\x08\x07" + bytes(range(256)) * 64  # any bytes: the cache does not parse them
    sha = hash_bytes(data)
    uri = f"{s3_bucket}/models/m.onnx"
    st.write_bytes(uri, data)
    assert read_artifact(uri, sha256=sha) == data
    cached = tmp_path / "cache" / sha
    assert cached.read_bytes() == data
    st.delete_file(uri)  # the store no longer has it: the second job is served from the cache
    assert read_artifact(uri, sha256=sha) == data
    cached.write_bytes(b"damaged")  # a damaged copy is not used, and the object is gone: a clear error
    with pytest.raises(ModelError, match=r"m.onnx not found; check model.uri"):
        read_artifact(uri, sha256=sha)
    st.write_bytes(uri, data)  # back on the store: refetched, and the cache repaired
    assert read_artifact(uri, sha256=sha) == data and cached.read_bytes() == data
    other = b"another model"
    st.write_bytes(uri, other)  # changed at the same URI: the job still gets the bytes it hashed at start
    assert read_artifact(uri, sha256=sha) == data
    cached.unlink()  # without the cached copy the new bytes arrive (the model cache refuses them:
    assert read_artifact(uri, sha256=sha) == other  # "changed after the job started") and are never cached
    assert not cached.exists()
