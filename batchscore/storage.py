"""Locations as URIs: local paths, ``file://``, ``s3://`` (``s3a://`` is an alias), ``gs://``,
``abfss://`` and ``hdfs://``, read and written through pyarrow filesystems (executors and driver
alike) and handed to delta-rs with the same credentials.

Credentials and endpoints come the way the cloud SDKs and delta-rs take them: the standard
environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``, ``AWS_ENDPOINT_URL`` for an S3-compatible store, ``AWS_ALLOW_HTTP=true`` for a
plain-http endpoint; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_ACCOUNT_KEY`` ...), or
instance/workload identity when none is set. A model config's optional ``storage:`` section maps
an option to *the name of another environment variable* holding its value (:class:`Storage`):
a secret never sits in a file, a Spark conf, a process argument, a report or a log line. Each
process (the driver, every executor) resolves the variables in its own environment, so a
:class:`Storage` is safe to ship to executors inside a closure.

Errors from a store are turned into one line naming the URI and what to do
(:func:`storage_error`): a missing bucket, a refused credential or a missing object is bad input
(exit 2); an unreachable endpoint is infrastructure (exit 4, safe to retry).
"""

from __future__ import annotations

import functools
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from batchscore.errors import (
    BatchscoreError,
    ConfigError,
    InfrastructureError,
    InputDataError,
)

__all__ = ["OPTIONS", "Storage", "guard", "is_local", "join", "normalize", "scheme", "storage_error"]

# The options a ``storage:`` section may map, by scheme family (names as the SDKs' variables).
OPTIONS = {
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
           "AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS",),
    "abfss": ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
              "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_STORAGE_ENDPOINT",
              "AZURE_ALLOW_HTTP"),
}
ALL_OPTIONS = tuple(o for opts in OPTIONS.values() for o in opts)
SECRET_OPTIONS = {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY",
                  "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_SECRET"}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
_FAMILY = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "abfss": "abfss", "abfs": "abfss", "hdfs": "hdfs",
           "file": "file"}


def scheme(uri: str) -> str:
    """The location's scheme family: ``local``, ``s3``, ``gs``, ``abfss``, ``hdfs``."""
    m = _SCHEME.match(uri)
    if not m:
        return "local"
    fam = _FAMILY.get(m.group(1).lower())
    if fam is None:
        raise ConfigError(f"{uri}: unsupported storage scheme '{m.group(1)}://'; use a local path, file://, s3:// "
                          "(s3a://), gs://, abfss:// or hdfs://")
    return "local" if fam == "file" else fam


def is_local(uri: str) -> bool:
    return scheme(uri) == "local"


def normalize(uri: str) -> str:
    """``s3a://`` -> ``s3://``, ``gcs://`` -> ``gs://``, ``abfs://`` -> ``abfss://``, ``file:///p`` -> ``/p``;
    no trailing slash."""
    m = _SCHEME.match(uri)
    if m is None:
        return uri.rstrip("/") or "/"
    fam = scheme(uri)
    if fam == "local":
        return uri[len(m.group(0)):].rstrip("/") or "/"
    return f"{fam}://{uri[len(m.group(0)):].rstrip('/')}"


def join(base: str, *parts: str) -> str:
    out = normalize(base)
    for p in parts:
        out = f"{out.rstrip('/')}/{p.strip('/')}"
    return out


def relative(root: str, uri: str) -> str:
    """``uri`` relative to ``root`` (both normalized); raises ValueError when it is not under it."""
    r, u = normalize(root).rstrip("/") + "/", normalize(uri)
    if not u.startswith(r):
        raise ValueError(f"{uri} is not under {root}")
    return u[len(r):]


@dataclass(frozen=True)
class Storage:
    """How to reach the stores: ``env`` maps an option (``AWS_ACCESS_KEY_ID`` ...) to the name of
    the environment variable holding its value; an option not mapped is read from its standard
    variable.

    :meth:`captured` (what a job's config hands out, on the driver) also carries the values the
    driver resolved, so executors reach the store with the job's own credentials whatever their
    environment holds; they travel inside the pickled task closure (as the Redis URL does), never
    in the Spark conf, a process argument, a report or a log line (``repr`` shows variable names
    only). Where the driver has no explicit credentials (instance or workload identity) nothing is
    captured and each executor uses its own identity."""

    env: tuple[tuple[str, str], ...] = ()
    values: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    def captured(self) -> Storage:
        """This storage with the options resolved here (the driver) attached."""
        got = tuple((o, v) for o in ALL_OPTIONS if (v := self._env_value(o)) is not None)
        return Storage(env=self.env, values=got)

    def value(self, option: str) -> str | None:
        for o, v in self.values:
            if o == option:
                return v
        return self._env_value(option)

    def _env_value(self, option: str) -> str | None:
        var = dict(self.env).get(option, option)
        got = os.environ.get(var)
        if got is None and option == "AWS_REGION":
            got = os.environ.get("AWS_DEFAULT_REGION")
        return got or None

    def options(self, uri: str) -> dict[str, str]:
        """delta-rs ``storage_options`` for ``uri`` (may hold secrets: pass on, never log)."""
        fam = scheme(uri)
        if fam not in OPTIONS:
            return {}
        out = {o: v for o in OPTIONS[fam] if (v := self.value(o)) is not None}
        if fam == "s3":
            if "AWS_REGION" not in out:  # AWS itself: the bucket's own region; another store: any
                bucket = normalize(uri).split("://", 1)[1].split("/", 1)[0]
                out["AWS_REGION"] = _bucket_region(bucket) if "AWS_ENDPOINT_URL" not in out else "us-east-1"
            if out.get("AWS_ENDPOINT_URL", "").startswith("http://"):
                out.setdefault("AWS_ALLOW_HTTP", "true")
        if fam == "abfss" and out.get("AZURE_STORAGE_ENDPOINT", "").startswith("http://"):
            out.setdefault("AZURE_ALLOW_HTTP", "true")  # an emulator (Azurite) or a private endpoint
        return out

    def filesystem(self, uri: str) -> tuple[Any, str]:
        """``(pyarrow FileSystem, path within it)`` for ``uri``."""
        fam = scheme(uri)
        norm = normalize(uri)
        if fam == "local":
            return _local_fs(), os.path.abspath(norm)
        rest = norm.split("://", 1)[1]
        if fam == "s3":
            return _s3_fs(tuple(sorted(self.options(uri).items()))), rest
        if fam == "gs":
            return _gcs_fs(self._key("gs")), rest
        if fam == "abfss":
            container_account, _, path = rest.partition("/")
            container, _, host = container_account.partition("@")
            account = host.split(".", 1)[0] or (self.value("AZURE_STORAGE_ACCOUNT_NAME") or "")
            with guard(uri, "set up Azure credentials", self):
                return _azure_fs(account, self._key("abfss")), f"{container}/{path}".rstrip("/")
        authority, _, path = rest.partition("/")
        return _hdfs_fs(authority), "/" + path

    def _key(self, fam: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self.options(f"{fam}://x").items()))

    def __repr__(self) -> str:  # names of variables only
        return f"Storage(env={dict(self.env)!r})"


DEFAULT = Storage()


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str:
    """An AWS bucket's region (one anonymous HEAD, cached); us-east-1 when it cannot be told."""
    import pyarrow.fs as pafs

    try:
        return str(pafs.resolve_s3_region(bucket))
    except (OSError, ValueError):
        return "us-east-1"


@functools.lru_cache(maxsize=1)
def _local_fs() -> Any:
    import pyarrow.fs as pafs

    return pafs.LocalFileSystem()


@functools.lru_cache(maxsize=16)
def _s3_fs(opts: tuple[tuple[str, str], ...]) -> Any:
    import pyarrow.fs as pafs

    o = dict(opts)
    endpoint = o.get("AWS_ENDPOINT_URL")
    kw: dict[str, Any] = {"region": o.get("AWS_REGION", "us-east-1"), "connect_timeout": 5, "request_timeout": 60,
                          "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
                          "allow_delayed_open": True}  # an object below the part size is one PUT, not 3 requests
    if endpoint:
        scheme_, _, host = endpoint.partition("://")
        kw.update(endpoint_override=host or scheme_, scheme=scheme_ if host else "https")
    if o.get("AWS_ACCESS_KEY_ID") and o.get("AWS_SECRET_ACCESS_KEY"):
        kw.update(access_key=o["AWS_ACCESS_KEY_ID"], secret_key=o["AWS_SECRET_ACCESS_KEY"],
                  session_token=o.get("AWS_SESSION_TOKEN"))
    return pafs.S3FileSystem(**kw)


@functools.lru_cache(maxsize=4)
def _gcs_fs(opts: tuple[tuple[str, str], ...]) -> Any:
    import pyarrow.fs as pafs

    return pafs.GcsFileSystem()  # application default credentials (GOOGLE_APPLICATION_CREDENTIALS)


@functools.lru_cache(maxsize=4)
def _azure_fs(account: str, opts: tuple[tuple[str, str], ...]) -> Any:
    import pyarrow.fs as pafs

    o = dict(opts)
    kw: dict[str, Any] = {
        "account_key": o.get("AZURE_STORAGE_ACCOUNT_KEY"),
        "sas_token": o.get("AZURE_STORAGE_SAS_TOKEN"),
    }
    if o.get("AZURE_STORAGE_ENDPOINT"):
        kw.update(_azure_endpoint(account, o["AZURE_STORAGE_ENDPOINT"]))
    if o.get("AZURE_CLIENT_SECRET"):  # a service principal
        kw.update(
            client_id=o.get("AZURE_CLIENT_ID"),
            client_secret=o["AZURE_CLIENT_SECRET"],
            tenant_id=o.get("AZURE_TENANT_ID"),
        )
    elif o.get("AZURE_CLIENT_ID") and not (kw["account_key"] or kw["sas_token"]):  # a user-assigned managed identity
        kw.update(client_id=o["AZURE_CLIENT_ID"])  # (workload identity's tenant id alone is not a credential)
    return pafs.AzureFileSystem(account_name=account, **{k: v for k, v in kw.items() if v})


def _azure_endpoint(account: str, endpoint: str) -> dict[str, str]:
    """pyarrow's Blob/DFS authority and scheme for ``AZURE_STORAGE_ENDPOINT`` (the URL delta-rs takes):
    ``http://127.0.0.1:10000/<account>`` (Azurite: the account in the path) or
    ``https://<account>.blob.<suffix>`` (a sovereign or private cloud: the account in the host)."""
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"AZURE_STORAGE_ENDPOINT: '{parts.scheme}://{parts.netloc}...' is not an http(s) URL; "
                          "give the Blob endpoint, e.g. https://<account>.blob.core.windows.net")
    host = parts.netloc
    if host.startswith(f"{account}.blob."):
        blob = host[len(account):]  # ".blob.<suffix>": pyarrow puts the account in front
        dfs = blob.replace(".blob.", ".dfs.", 1)
    else:
        blob = dfs = host  # path-style: pyarrow puts the account in the path
    return {"blob_storage_authority": blob, "dfs_storage_authority": dfs,
            "blob_storage_scheme": parts.scheme, "dfs_storage_scheme": parts.scheme}


@functools.lru_cache(maxsize=4)
def _hdfs_fs(authority: str) -> Any:
    import pyarrow.fs as pafs

    return pafs.HadoopFileSystem.from_uri(f"hdfs://{authority}")


# --- errors ----------------------------------------------------------------------------------

_UNREACHABLE = (
    "connection refused",
    "couldn't connect",
    "could not connect",
    "failed to connect",
    "timed out",
    "timeout",
    "error sending request",
    "connection reset",
    "broken pipe",
    "curlcode: 7",
    "curl error",
    "dns error",
    "network is unreachable",
    "connect error",
    "could not resolve",
    "fail to get a new connection",
    "name or service not known",
)
_DENIED = (
    "accessdenied",
    "access denied",
    "invalidaccesskeyid",
    "signaturedoesnotmatch",
    "403",
    "forbidden",
    "lacked the necessary privileges",
    "authorizationfailure",
    "authenticationfailed",
    "invalidtoken",
    "expiredtoken",
    "permission denied",
    "unauthorized",
)
_NO_BUCKET = ("nosuchbucket", "bucket '", "bucket does not exist", "the specified bucket")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # delta-rs colours its errors' cause chains
# An HTTP status as a word of its own: request ids (hex) and durations ("in 404.2µs") are not one.
_STATUS_403 = re.compile(r"(?<![\w.])403(?![\w.])")
_STATUS_404 = re.compile(r"(?<![\w.])404(?![\w.])")


def _endpoint(uri: str, storage: Storage) -> str:
    fam = scheme(uri)
    if fam == "s3":
        return storage.value("AWS_ENDPOINT_URL") or "the AWS S3 endpoint"
    if fam == "abfss" and (endpoint := storage.value("AZURE_STORAGE_ENDPOINT")):
        return endpoint
    return {"gs": "Google Cloud Storage", "abfss": "Azure Storage", "hdfs": "the HDFS namenode"}.get(fam, "local disk")


def storage_error(exc: BaseException, uri: str, what: str, storage: Storage = DEFAULT) -> BatchscoreError:
    """One line for a failed store operation on ``uri``: unreachable -> exit 4, denied/missing -> exit 2."""
    if isinstance(exc, BatchscoreError):
        return exc
    plain = " ".join(_ANSI.sub("", str(exc)).replace("\u21b3", ":").split())  # delta-rs colours its cause chain
    text = plain.lower()
    first = plain[:160]
    fam = scheme(uri)
    if any(s in text for s in _UNREACHABLE) and "no such" not in text:
        return InfrastructureError(
            f"{uri}: cannot {what}: storage endpoint {_endpoint(uri, storage)} is unreachable "
            f"({first}); check that the store is up and rerun (nothing was published)"
        )
    denied = any(s in text for s in _DENIED) or bool(_STATUS_403.search(text))
    if fam == "s3" and (any(s in text for s in _NO_BUCKET)
                        or (not denied and "list" in text and _STATUS_404.search(text))):
        bucket = normalize(uri).split("://", 1)[1].split("/", 1)[0]
        return InputDataError(
            f"{uri}: cannot {what}: bucket '{bucket}' does not exist at {_endpoint(uri, storage)}; "
            "create it or fix the location in the model config"
        )
    if fam == "abfss" and ("containernotfound" in text or "specified container does not exist" in text):
        container = normalize(uri).split("://", 1)[1].split("@", 1)[0].split("/", 1)[0]
        return InputDataError(
            f"{uri}: cannot {what}: container '{container}' does not exist at {_endpoint(uri, storage)}; "
            "create it or fix the location in the model config"
        )
    if denied:
        names = {
            "s3": "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or the storage: section's variables)",
            "gs": "GOOGLE_APPLICATION_CREDENTIALS",
            "abfss": "AZURE_STORAGE_ACCOUNT_KEY or the AZURE_CLIENT_* variables",
        }.get(fam, "the file permissions")
        return ConfigError(f"{uri}: cannot {what}: the store refused the credentials; check {names}")
    if isinstance(exc, FileNotFoundError) or "not found" in text or "no such" in text or _STATUS_404.search(text):
        return InputDataError(f"{uri}: cannot {what}: not found; check the location in the model config")
    return InputDataError(f"{uri}: cannot {what} ({first})")


@contextmanager
def guard(uri: str, what: str, storage: Storage = DEFAULT) -> Iterator[None]:
    """Turn store failures inside the block into :func:`storage_error`'s one-line errors."""
    try:
        yield
    except BatchscoreError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise storage_error(exc, uri, what, storage) from exc
    except Exception as exc:  # delta-rs raises its own exception types (DeltaError, ...)
        if type(exc).__name__ == "CommitFailedError":  # a lost race, not a store failure: the caller decides
            raise
        if type(exc).__module__.startswith(("deltalake", "_internal", "pyarrow")):
            raise storage_error(exc, uri, what, storage) from exc
        raise


def artifact_cache_dir() -> str:
    """This machine's cache of fetched artifacts (``$BATCHSCORE_ARTIFACT_CACHE``, default
    ``~/.cache/batchscore/artifacts``): files named by their sha256."""
    return os.environ.get("BATCHSCORE_ARTIFACT_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "batchscore", "artifacts"
    )


# --- file operations (driver and executors) --------------------------------------------------


def read_bytes(uri: str, storage: Storage = DEFAULT) -> bytes:
    fs, path = storage.filesystem(uri)
    with guard(uri, "read", storage), fs.open_input_stream(path) as f:
        return bytes(f.readall())


def write_bytes(uri: str, data: bytes, storage: Storage = DEFAULT) -> None:
    """Write ``data`` whole: a local file through a temporary name and a rename; an object with
    one PUT (object stores never show a partial object)."""
    fs, path = storage.filesystem(uri)
    with guard(uri, "write", storage):
        if is_local(uri):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            with fs.open_output_stream(path) as f:  # a small object: one PUT (delayed open)
                f.write(data)


def info(uri: str, storage: Storage = DEFAULT) -> Any:
    fs, path = storage.filesystem(uri)
    with guard(uri, "stat", storage):
        return fs.get_file_info(path)


def is_file(uri: str, storage: Storage = DEFAULT) -> bool:
    import pyarrow.fs as pafs

    return bool(info(uri, storage).type == pafs.FileType.File)


def exists(uri: str, storage: Storage = DEFAULT) -> bool:
    import pyarrow.fs as pafs

    return bool(info(uri, storage).type != pafs.FileType.NotFound)


def size(uri: str, storage: Storage = DEFAULT) -> int:
    got = info(uri, storage)
    if got.size is None:
        raise InputDataError(f"{uri}: not found; rerun the step that writes it")
    return int(got.size)


def list_files(
    uri: str, storage: Storage = DEFAULT, *, suffix: str = "", recursive: bool = True, hidden: bool = False
) -> list[tuple[str, int]]:
    """``(uri, size)`` of the files under ``uri`` ending in ``suffix``, sorted; ``_``/``.``-prefixed
    names (and folders) skipped unless ``hidden``. A missing folder lists as empty."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    base = normalize(uri)
    with guard(uri, "list", storage):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    out = []
    for i in infos:
        if i.type != pafs.FileType.File or not i.path.endswith(suffix):
            continue
        rel = i.path[len(path) :].lstrip("/")
        if not hidden and any(p.startswith(("_", ".")) for p in rel.split("/")):
            continue
        out.append((f"{base}/{rel}", int(i.size)))
    return sorted(out)


def delete_file(uri: str, storage: Storage = DEFAULT) -> None:
    fs, path = storage.filesystem(uri)
    with guard(uri, "delete", storage):
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass


def delete_dir(uri: str, storage: Storage = DEFAULT) -> None:
    """Remove ``uri`` and everything under it (nothing when it does not exist)."""
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    with guard(uri, "delete", storage):
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return
        fs.delete_dir(path)


def open_input(uri: str, storage: Storage = DEFAULT) -> Any:
    """A random-access file (for ``pyarrow.parquet.ParquetFile``)."""
    fs, path = storage.filesystem(uri)
    with guard(uri, "open", storage):
        return fs.open_input_file(path)


def parquet_file(uri: str, storage: Storage = DEFAULT) -> Any:
    import pyarrow.parquet as pq

    with guard(uri, "read Parquet footer", storage):
        # pre_buffer (coalesced parallel range reads) measured slower here: its IO threads compete
        # with the model for the task's core (benchmarks/README.md, "Storage")
        return pq.ParquetFile(open_input(uri, storage))


def read_parquet(uris: Sequence[str], columns: list[str], storage: Storage = DEFAULT) -> Any:
    """``columns`` of the Parquet files ``uris``, concatenated in order (a pyarrow Table; columns
    without a type when there is no file)."""
    import pyarrow as pa

    parts = [parquet_file(u, storage).read(columns=columns) for u in uris]
    return pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})


def sha256(uri: str, storage: Storage = DEFAULT) -> str:
    import hashlib

    fs, path = storage.filesystem(uri)
    h = hashlib.sha256()
    with guard(uri, "read", storage), fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def check_reachable(uri: str, storage: Storage = DEFAULT, *, what: str = "reach") -> None:
    """Fail early with the one-line error when ``uri``'s bucket/container cannot be listed."""
    if is_local(uri):
        return
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(uri)
    bucket = path.split("/", 1)[0]
    with guard(uri, what, storage):
        got = fs.get_file_info(bucket)
        if got.type == pafs.FileType.NotFound:
            raise InputDataError(
                f"{uri}: bucket '{bucket}' does not exist at {_endpoint(uri, storage)}; create it or "
                "fix the location in the model config"
            )
