"""Locations as URIs (batchscore.storage) and the config's storage section."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import yaml

from batchscore import storage as st
from batchscore.config import load_model_config
from batchscore.errors import ConfigError, InfrastructureError, InputDataError


@pytest.mark.parametrize(("uri", "scheme", "norm"), [
    ("/data/x/", "local", "/data/x"),
    ("file:///data/x", "local", "/data/x"),
    ("s3://b/k/", "s3", "s3://b/k"),
    ("s3a://b/k", "s3", "s3://b/k"),
    ("gs://b/k", "gs", "gs://b/k"),
    ("abfss://c@acct.dfs.core.windows.net/p", "abfss", "abfss://c@acct.dfs.core.windows.net/p"),
    ("hdfs://nn:8020/p", "hdfs", "hdfs://nn:8020/p"),
])
def test_schemes_and_normal_forms(uri: str, scheme: str, norm: str) -> None:
    assert st.scheme(uri) == scheme and st.normalize(uri) == norm
    assert st.join(uri, "runs", "/r1/") == f"{norm}/runs/r1"
    assert st.relative(uri, st.join(uri, "runs/r1/part-0.parquet")) == "runs/r1/part-0.parquet"


def test_an_unknown_scheme_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(ConfigError, match=r"ftp://.*use a local path, file://, s3:// \(s3a://\), gs://, abfss:// or hdfs://"):
        st.scheme("ftp://host/x")


def test_storage_carries_names_and_captured_values_never_shows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "AKIDEXAMPLE")
    monkeypatch.setenv("MY_SECRET", "s3cr3t-value")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    s = st.Storage(env=(("AWS_ACCESS_KEY_ID", "MY_KEY"), ("AWS_SECRET_ACCESS_KEY", "MY_SECRET"))).captured()
    assert "s3cr3t-value" not in repr(s) and "MY_SECRET" in repr(s)
    opts = s.options("s3://b/k")
    assert opts["AWS_SECRET_ACCESS_KEY"] == "s3cr3t-value" and opts["AWS_ALLOW_HTTP"] == "true"
    assert opts["AWS_REGION"] == "us-east-1"  # the default when none is set
    monkeypatch.delenv("MY_SECRET")  # an executor without the variable still has the driver's value
    shipped = pickle.loads(pickle.dumps(s))
    assert shipped.value("AWS_SECRET_ACCESS_KEY") == "s3cr3t-value"
    assert st.Storage(env=s.env).value("AWS_SECRET_ACCESS_KEY") is None
    assert st.Storage().options("/local/path") == {}


@pytest.mark.parametrize(("message", "kind", "needle"), [
    ("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Couldn't connect to server",
     InfrastructureError, "storage endpoint http://127.0.0.1:9 is unreachable"),
    ("Error performing GET ... HTTP error: error sending request for url", InfrastructureError, "unreachable"),
    ("AWS Error ACCESS_DENIED during HeadObject operation: No response body. 403", ConfigError,
     "refused the credentials"),
    ("AWS Error NO_SUCH_BUCKET: NoSuchBucket: The specified bucket does not exist", InputDataError,
     "bucket 'data' does not exist"),
    ("Path does not exist 'data/x': Not found", InputDataError, "not found; check the location"),
    ("Error performing list request: Server returned non-2xx status code: 404 Not Found", InputDataError,
     "bucket 'data' does not exist"),
    # A wrong secret on SeaweedFS, as delta-rs reports it: a random request id or a duration that
    # happens to hold "404" (next to a list request) is not a 404 (a CI run once said "no bucket").
    ("Kernel error -> Generic S3 error: Error performing list request in 404.311µs - Server returned "
     "non-2xx status code 403 Forbidden <Error><Code>SignatureDoesNotMatch</Code><RequestId>18EE404E76DC540"
     "</RequestId><BucketName>data</BucketName></Error>", ConfigError, "refused the credentials"),
    ("Error performing list request: request id 7C404A: The operation lacked the necessary privileges",
     ConfigError, "refused the credentials"),
])
def test_store_failures_become_one_line_errors(monkeypatch: pytest.MonkeyPatch, message: str, kind: type,
                                               needle: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    err = st.storage_error(OSError(message), "s3://data/x", "read")
    assert isinstance(err, kind) and needle in str(err) and str(err).startswith("s3://data/x: cannot read")
    assert "\n" not in str(err)


@pytest.mark.parametrize(("message", "kind", "needle"), [
    ("Error performing list request - Server returned non-2xx status code 404 Not Found <Error>"
     "<Code>ContainerNotFound</Code><Message>The specified container does not exist.", InputDataError,
     "container 'data' does not exist at http://127.0.0.1:9/acct"),
    ("Azure Error: [AuthorizationFailure] 403 Server failed to authenticate the request.", ConfigError,
     "check AZURE_STORAGE_ACCOUNT_KEY"),
    ("[Errno 2] Path does not exist 'data/x'. Detail: [errno 2] No such file or directory", InputDataError,
     "not found; check the location"),
])
def test_azure_store_failures_become_one_line_errors(monkeypatch: pytest.MonkeyPatch, message: str, kind: type,
                                                     needle: str) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", "http://127.0.0.1:9/acct")
    uri = "abfss://data@acct.dfs.core.windows.net/x"
    err = st.storage_error(OSError(message), uri, "read")
    assert isinstance(err, kind) and needle in str(err) and str(err).startswith(f"{uri}: cannot read"), err


def test_delta_rs_colours_and_dns_failures_are_plain_one_line_errors() -> None:
    """delta-rs prints its cause chain with ANSI colours and arrows; a name that does not resolve is unreachable."""
    err = st.storage_error(OSError("Kernel error -> Generic error \x1b[31m\u21b3\x1b[0m Error performing GET\n"
                                   "   \x1b[31m\u21b3\x1b[0m error sending request"), "s3://data/x", "read")
    assert isinstance(err, InfrastructureError) and "\x1b" not in str(err) and "\u21b3" not in str(err)
    assert "Generic error : Error performing GET : error sending request" in str(err) and "\n" not in str(err)
    dns = st.storage_error(OSError("Fail to get a new connection for: https://acct.dfs.core.windows.net. Could not "
                                   "resolve hostname"), "abfss://c@acct.dfs.core.windows.net/x", "list")
    assert isinstance(dns, InfrastructureError) and "unreachable" in str(dns)


def test_an_azure_endpoint_maps_to_pyarrows_authorities(monkeypatch: pytest.MonkeyPatch) -> None:
    """Path-style (Azurite: the account in the path) and host-style (a sovereign cloud) endpoints; delta-rs
    gets the same URL, with plain http allowed only for an http:// endpoint."""
    assert st._azure_endpoint("acct", "http://127.0.0.1:10000/acct") == {
        "blob_storage_authority": "127.0.0.1:10000", "dfs_storage_authority": "127.0.0.1:10000",
        "blob_storage_scheme": "http", "dfs_storage_scheme": "http"}
    assert st._azure_endpoint("acct", "https://acct.blob.core.chinacloudapi.cn") == {
        "blob_storage_authority": ".blob.core.chinacloudapi.cn", "dfs_storage_authority": ".dfs.core.chinacloudapi.cn",
        "blob_storage_scheme": "https", "dfs_storage_scheme": "https"}
    with pytest.raises(ConfigError, match="AZURE_STORAGE_ENDPOINT.*not an http"):
        st._azure_endpoint("acct", "127.0.0.1:10000")
    uri = "abfss://c@acct.dfs.core.windows.net/p"
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", "http://127.0.0.1:10000/acct")
    assert st.Storage().options(uri)["AZURE_ALLOW_HTTP"] == "true"
    monkeypatch.setenv("AZURE_STORAGE_ENDPOINT", "https://acct.blob.core.chinacloudapi.cn")
    assert "AZURE_ALLOW_HTTP" not in st.Storage().options(uri)


def _cfg(tmp_path: Path, **extra: object) -> Path:
    d = {"name": "m", "model": {"uri": "s3a://b/model.onnx", "format": "onnx", "version": "v1"},
         "input": {"path": "s3a://b/features", "key": "k", "features": ["a"]},
         "outputs": {"delta": {"path": "s3://b/pred/"}}, "runtime": {"report_dir": "s3://b/runs"}, **extra}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_config_locations_are_uris_and_s3a_is_s3(tmp_path: Path) -> None:
    cfg = load_model_config(_cfg(tmp_path))
    assert (cfg.model.uri, cfg.input.path, cfg.outputs.delta.path, cfg.runtime.report_dir) == (
        "s3://b/model.onnx", "s3://b/features", "s3://b/pred", "s3://b/runs")


def test_the_storage_section_names_variables_and_refuses_values(tmp_path: Path) -> None:
    cfg = load_model_config(_cfg(tmp_path, storage={"AWS_SECRET_ACCESS_KEY": "SCORING_SECRET"}))
    assert cfg.store.env == (("AWS_SECRET_ACCESS_KEY", "SCORING_SECRET"),)
    with pytest.raises(ConfigError, match="give the name of an environment variable") as e:
        load_model_config(_cfg(tmp_path, storage={"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"}))
    assert "wJalrXUtnFEMI" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown storage option 'AWS_PASSWORD'"):
        load_model_config(_cfg(tmp_path, storage={"AWS_PASSWORD": "X"}))
    with pytest.raises(ConfigError, match="unsupported storage scheme 'ftp://'"):
        load_model_config(_cfg(tmp_path, input={"path": "ftp://h/x", "key": "k", "features": ["a"]}))
