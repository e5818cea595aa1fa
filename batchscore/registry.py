"""Registered MLflow models (``model.uri: models:/<name>/<version>`` or ``models:/<name>@<alias>``),
resolved on the DRIVER only.

:func:`resolve` asks the registry at ``MLFLOW_TRACKING_URI`` which version the URI names (an alias
is read once, then everything uses that version number), downloads that version's artifacts,
picks the model file, checks the MLflow signature (when the version has one) against the config's
features and outputs, and stores the file content-addressed as ``<cache_dir>/<sha256><ext>``. The
executors get only that path and hash (``batchscore.udfs.model_ref.ModelRef``) and never call the registry:
``cache_dir`` must therefore be storage every executor can read, like the Delta root: a local
folder they all mount, or a store URI (the default ``<outputs.delta.path>/_models`` on ``s3://``:
the driver uploads the file there and each executor fetches it into its own content-addressed
cache, :func:`batchscore.udfs.model_ref.read_artifact`).

Which file is the model (the convention, see README "Models from MLflow"):

* ``model.artifact_path`` when set (relative to the version's artifact root);
* else the file the version's MLmodel flavour names: ``flavors.onnx.data`` (``mlflow.onnx.log_model``)
  for ``onnx``; ``<flavors.pytorch.model_data>/model.pt2`` (``mlflow.pytorch.log_model``, its
  default ``serialization_format="pt2"``) for ``torch_export``; ``<model_data>/model.pth``
  (``serialization_format="pickle"`` of a ``torch.jit.ScriptModule``) for ``torchscript``;
* else the one file with the format's extension anywhere in the artifacts: ``*.onnx``;
  ``*.pt`` / ``*.pth`` (TorchScript); ``*.pt2`` (``torch.export.save``). This covers a file logged
  with ``mlflow.log_artifact(path, "model")`` and registered with
  ``MlflowClient().create_model_version(name, f"runs:/{run_id}/model", run_id)``.

An ONNX model saved with external data (``mlflow.onnx.log_model``'s default for tensors of 1 KiB
or more) is merged into one self-contained file first; the recorded ``sha256`` is always that of
the bytes the executors load.

mlflow is imported lazily (the ``mlflow`` extra, ``mlflow-skinny`` is enough); nothing here runs
on an executor. :func:`check_alias_unchanged` is the publish-time guard against an alias that
moved after the run was scored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from batchscore.config import ModelConfig, RegistryRef
from batchscore.errors import (
    BatchscoreError,
    ConfigError,
    InfrastructureError,
    ModelError,
    missing_extra,
)

TRACKING_ENV = "MLFLOW_TRACKING_URI"
CACHE_ENV = "BATCHSCORE_MODEL_CACHE_DIR"
EXTENSIONS = {"onnx": (".onnx",), "torchscript": (".pt", ".pth"), "torch_export": (".pt2",)}
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "ENDPOINT_NOT_FOUND"}
_DENIED = {"PERMISSION_DENIED", "UNAUTHENTICATED", "UNAUTHORIZED"}
_CREDENTIALS = re.compile(r"//[^/@\s]+@")


class NotInRegistry(ModelError):
    """The registered model, version or alias does not exist (exit 2)."""


@dataclass(frozen=True)
class Resolved:
    """A registered model version, downloaded: ``path`` (content-addressed) and its ``sha256``;
    ``info`` is what the score report records under ``registry``."""

    path: str
    sha256: str
    info: dict[str, Any]


def is_registry_uri(uri: str) -> bool:
    return uri.startswith("models:")


def tracking_uri() -> str:
    uri = os.environ.get(TRACKING_ENV, "").strip()
    if not uri:
        raise ConfigError(f"model.uri is a registered MLflow model but {TRACKING_ENV} is not set; export it on the "
                          "driver (e.g. http://mlflow.internal:5000)")
    return uri


def redact(uri: str) -> str:
    """``uri`` without user:password and query (what reports and messages show)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc and not parts.query:
        return uri
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def cache_location(cfg: ModelConfig) -> str:
    """Where resolved artifacts live, a local path or a store URI: ``model.cache_dir``,
    ``$BATCHSCORE_MODEL_CACHE_DIR``, or ``<outputs.delta.path>/_models`` (the Delta root is already
    storage every executor reads)."""
    from batchscore.storage import join

    return cfg.model.cache_dir or os.environ.get(CACHE_ENV) or join(cfg.outputs.delta.path, "_models")


def cache_dir(cfg: ModelConfig) -> Path:
    """The local folder resolved artifacts are prepared in: :func:`cache_location` when local;
    for a store URI a local staging cache (the artifact is then uploaded to the store as
    ``<location>/<sha256><ext>``, which the executors fetch)."""
    from batchscore.storage import is_local

    raw = cache_location(cfg)
    if not is_local(raw):
        from batchscore.storage import artifact_cache_dir

        return Path(artifact_cache_dir()) / "registry"
    return Path(raw.removeprefix("file://")).expanduser().resolve()


# -- the registry client -------------------------------------------------------------------------

def _client(tracking: str) -> Any:
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise missing_extra("mlflow", "mlflow") from None
    return MlflowClient(tracking_uri=tracking)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _scrubbed(exc: BaseException) -> str:
    """The first line of ``exc`` without credentials (MLflow's messages quote the request URL)."""
    return _CREDENTIALS.sub("//", _first_line(exc))[:240].rstrip(".")


def _registry_error(exc: Exception, what: str, tracking: str) -> BatchscoreError:
    code = str(getattr(exc, "error_code", "") or "")
    if code in _NOT_FOUND:
        return NotInRegistry(f"{what}: {_scrubbed(exc)}; check model.uri (the registered model's name, version or "
                          f"alias) against the registry at {redact(tracking)}")
    if code in _DENIED:
        return ModelError(f"{what}: the registry at {redact(tracking)} refused access ({_scrubbed(exc)}); "
                          "check the MLflow credentials (MLFLOW_TRACKING_TOKEN or _USERNAME/_PASSWORD)")
    return InfrastructureError(f"{what}: the MLflow registry at {redact(tracking)} failed ({_scrubbed(exc)}); "
                               "retry when it is reachable")


@contextlib.contextmanager
def _registry_call(what: str, tracking: str) -> Iterator[None]:
    """Map MLflow / HTTP / storage failures to one-line batchscore errors."""
    try:
        yield
    except BatchscoreError:
        raise
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        try:
            from requests import RequestException
        except ImportError:  # requests comes with mlflow; never expected
            RequestException = OSError  # type: ignore[misc,assignment]
        if isinstance(exc, (MlflowException, RequestException, OSError)):
            raise _registry_error(exc, what, tracking) from None
        raise


def lookup(client: Any, ref: RegistryRef, *, uri: str, tracking: str) -> Any:
    """The ``ModelVersion`` that ``ref`` names now."""
    with _registry_call(uri, tracking):
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, ref.version)


@contextlib.contextmanager
def _quiet_downloads() -> Iterator[None]:
    """No tqdm progress bar in the job's log (restored afterwards)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    old = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _download(name: str, version: str, dst: Path, *, where: str, tracking: str) -> Path:
    """Download version ``version`` (a number: an alias is never re-read) of ``name`` into ``dst``
    (``models:/<name>/<version>``: MLflow's own resolution, Unity Catalog and Databricks included)."""
    with _registry_call(f"{where}: download", tracking), _quiet_downloads():
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst),
                                                    tracking_uri=tracking)
    return Path(local)


# -- finding the model file ----------------------------------------------------------------------

def _mlmodel(root: Path, where: str) -> dict[str, Any] | None:
    path = root / "MLmodel"
    if not path.is_file():
        return None
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ModelError(
            f"{where}: its MLmodel file is not valid YAML ({_first_line(exc)}); re-log the model"
        ) from None
    return raw if isinstance(raw, dict) else None


def _flavour_file(mlmodel: dict[str, Any] | None, fmt: str) -> str | None:
    flavors = (mlmodel or {}).get("flavors") or {}
    if fmt == "onnx" and isinstance(flavors.get("onnx"), dict):
        return str(flavors["onnx"].get("data") or "model.onnx")
    if fmt in ("torchscript", "torch_export") and isinstance(flavors.get("pytorch"), dict):
        data = str(flavors["pytorch"].get("model_data") or "data")
        return f"{data}/{'model.pt2' if fmt == 'torch_export' else 'model.pth'}"
    return None


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _listing(files: list[str], limit: int = 8) -> str:
    shown = ", ".join(files[:limit]) + (f" (+{len(files) - limit} more)" if len(files) > limit else "")
    return shown or "no files"


def pick_artifact(
    root: Path, fmt: str, *, artifact_path: str | None, mlmodel: dict[str, Any] | None, where: str
) -> Path:
    """The model file inside a downloaded model version (the convention in the module docstring)."""
    files = _files(root)
    if artifact_path:
        p = root / artifact_path
        if not p.is_file():
            raise ModelError(
                f"{where}: model.artifact_path '{artifact_path}' is not a file of the model version "
                f"(it has: {_listing(files)}); fix model.artifact_path"
            )
        return p
    named = _flavour_file(mlmodel, fmt)
    if named is not None and (root / named).is_file():
        return root / named
    found = [f for f in files if f.lower().endswith(EXTENSIONS[fmt])]
    if len(found) == 1:
        return root / found[0]
    if len(found) > 1:
        raise ModelError(
            f"{where}: {len(found)} candidate {fmt} files ({_listing(found)}); set model.artifact_path "
            "to the one to score with"
        )
    others = {}
    for other in EXTENSIONS:
        flavour = _flavour_file(mlmodel, other) if other != fmt else None
        hit = (
            flavour
            if flavour and (root / flavour).is_file()
            else next((f for f in files if other != fmt and f.lower().endswith(EXTENSIONS[other])), None)
        )
        if hit:
            others[other] = hit
    hint = (
        "it holds "
        + ", ".join(f"{'an' if o == 'onnx' else 'a'} {o} model ({f})" for o, f in others.items())
        + ": set model.format: "
        + " or ".join(others)
        if others
        else f"log the model file ({' / '.join(EXTENSIONS[fmt])}) into the version's artifacts"
    )
    raise ModelError(
        f"{where}: no {fmt} model file among its artifacts ({_listing(files)}); {hint}, or set model.artifact_path"
    )


def _check_torchscript_archive(path: Path, where: str) -> None:
    """A pickled ``torch.save`` module is not TorchScript: say so before torch.jit.load does, obscurely."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if names and not any("/code/" in n for n in names) and any(n.endswith("data.pkl") for n in names):
        raise ModelError(
            f"{where}: {path.name} is a pickled torch module (torch.save), not TorchScript; log "
            "torch.jit.script(model) instead, or mlflow.pytorch.log_model(...) with its default "
            "serialization_format='pt2' and model.format: torch_export"
        )


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for g in attr.graphs:
                yield from _onnx_tensors(g)


def self_contained_onnx(path: Path, where: str) -> bytes | None:
    """The model as one self-contained file when ``path`` keeps tensors in external files (else None)."""
    try:
        import onnx
    except ImportError:
        raise missing_extra("onnx", "spark") from None
    try:
        shallow = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{where}: {path.name} is not a loadable ONNX model ({_first_line(exc)})") from None
    if not any(t.data_location == onnx.TensorProto.EXTERNAL for t in _onnx_tensors(shallow.graph)):
        return None
    try:
        full = onnx.load(str(path))  # reads the external files next to it
        onnx.external_data_helper.convert_model_from_external_data(full)
        return bytes(full.SerializeToString())
    except Exception as exc:
        raise ModelError(
            f"{where}: {path.name} keeps its weights in external files that could not be merged into "
            f"one ({_first_line(exc)}); ONNX models over 2 GiB are not supported from the registry"
        ) from None


# -- the signature -------------------------------------------------------------------------------

_NUMERIC = {"integer", "long", "float", "double", "boolean"}


def _spec_type(spec: Any) -> str:
    t = getattr(spec, "type", None)
    return str(getattr(t, "name", t))


def check_signature(signature: Any, cfg: ModelConfig, where: str) -> None:
    """Refuse a model whose MLflow signature does not fit ``cfg``'s input and outputs (ModelError
    naming the config field and the fix). A missing signature (or half of one) is not checked."""
    if signature is None:
        return
    spec, columns = cfg.input, list(cfg.outputs.columns)
    inputs = list(signature.inputs.inputs) if signature.inputs is not None else []
    field = "input.features" if spec.features else "input.feature_count"
    if inputs and signature.inputs.is_tensor_spec():
        if len(inputs) != 1:
            names = ", ".join(str(i.name) for i in inputs)
            raise ModelError(
                f"{where}: the model signature has {len(inputs)} input tensors ({names}); batchscore feeds "
                "one (rows, features) float32 matrix: register a model with a single input"
            )
        t = inputs[0]
        label = f"input '{t.name}'" if t.name else "input tensor"
        if str(t.type) != "float32":
            raise ModelError(
                f"{where}: the model signature's {label} is {t.type}; batchscore feeds float32: "
                "register the model with a float32 input"
            )
        shape = tuple(t.shape)
        if len(shape) != 2:
            raise ModelError(
                f"{where}: the model signature's {label} has shape {shape}; batchscore feeds "
                "(rows, features): register a model with a 2-d input"
            )
        width = int(shape[1])
        if width != -1 and width != spec.n_features:
            raise ModelError(
                f"{where}: the model signature's {label} takes {width} features but {field} gives "
                f"{spec.n_features}; set {field} to the model's {width} features (in its training "
                "order) or point model.uri at a matching version"
            )
    elif inputs:
        in_names = [str(c.name) for c in inputs]
        bad = [f"{c.name} ({_spec_type(c)})" for c in inputs if _spec_type(c) not in _NUMERIC]
        if bad:
            raise ModelError(
                f"{where}: the model signature has non-numeric input column(s) {', '.join(bad)}; "
                "batchscore feeds float32 features: register a model with numeric inputs"
            )
        if spec.features:
            if in_names != list(spec.features):
                if sorted(in_names) == sorted(spec.features):
                    why = "the same columns in another order"
                else:
                    missing = [n for n in in_names if n not in spec.features]
                    extra = [f for f in spec.features if f not in in_names]
                    why = "; ".join(
                        x
                        for x in (
                            f"missing {missing}" if missing else "",
                            f"not in the signature {extra}" if extra else "",
                        )
                        if x
                    )
                raise ModelError(
                    f"{where}: input.features {list(spec.features)} does not match the model signature's "
                    f"inputs {in_names} ({why}); set input.features to {in_names}"
                )
        elif len(in_names) > 1 and len(in_names) != spec.n_features:
            raise ModelError(
                f"{where}: the model signature has {len(in_names)} input columns but input.feature_count is "
                f"{spec.n_features}; set input.feature_count: {len(in_names)}"
            )
    outputs = list(signature.outputs.inputs) if signature.outputs is not None else []
    if outputs and signature.outputs.is_tensor_spec():
        widths = []
        for t in outputs:
            shape = tuple(t.shape)
            widths.append(1 if len(shape) == 1 else int(shape[1]) if len(shape) == 2 else -1)
        if all(w > 0 for w in widths) and sum(widths) != len(columns):
            raise ModelError(
                f"{where}: the model signature gives {sum(widths)} output column(s) but outputs.columns "
                f"names {len(columns)} ({columns}); set outputs.columns to {sum(widths)} name(s) or point "
                "model.uri at a matching version"
            )
    elif outputs:
        out_names = [str(c.name) for c in outputs]
        if out_names != columns:
            raise ModelError(
                f"{where}: outputs.columns {columns} does not match the model signature's outputs "
                f"{out_names}; set outputs.columns to {out_names}"
            )


def _signature(root: Path, mlmodel: dict[str, Any] | None, where: str) -> Any:
    if not mlmodel or not mlmodel.get("signature"):
        return None
    from mlflow.models import Model

    try:
        return Model.load(str(root / "MLmodel")).signature
    except Exception as exc:
        raise ModelError(
            f"{where}: its MLmodel signature could not be read ({_first_line(exc)}); re-log the model "
            "with a valid signature (or none)"
        ) from None


# -- resolve -------------------------------------------------------------------------------------


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _store(cache: Path, tmp: Path, picked: Path, data: bytes | None, ext: str) -> tuple[Path, str]:
    """Put the artifact at ``<cache>/<sha256><ext>`` (atomically; an intact copy is kept)."""
    if data is not None:
        merged = tmp / f"merged{ext}"
        merged.write_bytes(data)
        picked = merged
    sha = _sha256_file(picked)
    final = cache / f"{sha}{ext}"
    if not (final.is_file() and _sha256_file(final) == sha):
        staging = cache / f".{sha}.{os.getpid()}.tmp"
        shutil.copyfile(picked, staging)
        os.replace(staging, final)
    return final, sha


def resolve(cfg: ModelConfig, *, log: Callable[[str], None] = lambda _m: None) -> Resolved:
    """Resolve ``cfg.model.uri`` (a ``models:/`` URI) to a checked, content-addressed local file."""
    ref = cfg.model.registry
    if ref is None:
        raise ModelError(
            f"model.uri {cfg.model.uri} is not a registered model (models:/<name>/<version> or models:/<name>@<alias>)"
        )
    uri, fmt, tracking = cfg.model.uri, cfg.model.format, tracking_uri()
    client = _client(tracking)
    mv = lookup(client, ref, uri=uri, tracking=tracking)
    version = str(mv.version)
    where = f"{uri} (version {version})" if ref.alias else uri
    cache = cache_dir(cfg)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"model cache directory {cache}: {_first_line(exc)}; set model.cache_dir (or "
            f"{CACHE_ENV}) to a writable directory every executor can read"
        ) from None
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmpdir:
        tmp = Path(tmpdir)
        root = _download(ref.name, version, tmp / "artifacts", where=where, tracking=tracking)
        mlmodel = _mlmodel(root, where)
        picked = pick_artifact(root, fmt, artifact_path=cfg.model.artifact_path, mlmodel=mlmodel, where=where)
        check_signature(_signature(root, mlmodel, where), cfg, where)
        if fmt == "torchscript":
            _check_torchscript_archive(picked, where)
        merged = self_contained_onnx(picked, where) if fmt == "onnx" else None
        ext = picked.suffix if picked.suffix.lower() in EXTENSIONS[fmt] else EXTENSIONS[fmt][0]
        final, sha = _store(cache, tmp, picked, merged, ext)
        artifact = str(picked.relative_to(root))
    info = {
        "uri": uri,
        "name": ref.name,
        "version": version,
        "alias": ref.alias,
        "run_id": mv.run_id or None,
        "source": mv.source,
        "artifact": artifact,
        "external_data_merged": merged is not None,
        "sha256": sha,
        "path": str(final),
        "tracking_uri": redact(tracking),
    }
    where_now = str(final)
    location = cache_location(cfg)
    from batchscore import storage as st

    if not st.is_local(location):  # executors fetch it from the store (content-addressed, sha256-checked)
        where_now = st.join(location, final.name)
        if not st.is_file(where_now, cfg.store) or st.size(where_now, cfg.store) != final.stat().st_size:
            st.write_bytes(where_now, final.read_bytes(), cfg.store)
        info["path"] = where_now
    log(f"model {uri} -> version {version} (run {mv.run_id or '-'}, {artifact}) sha256 {sha[:12]} at {where_now}")
    return Resolved(path=where_now, sha256=sha, info=info)


# -- publish-time guard --------------------------------------------------------------------------


def check_alias_unchanged(cfg: ModelConfig, score_report: dict[str, Any]) -> None:
    """Refuse (ModelError, exit 2) to publish a run whose registered model moved since it was scored:
    ``model.uri`` changed, the tracking server changed, or the alias now names another version (or
    none). A pinned version (``models:/<name>/<version>``) never moves: nothing is asked then."""
    run = score_report.get("run_id", "?")
    reg = score_report.get("registry") or None
    ref = cfg.model.registry
    if ref is None and reg is None:
        return
    if ref is None or reg is None or reg.get("uri") != cfg.model.uri:
        was = reg.get("uri") if reg else "a file path"
        raise ModelError(
            f"model.uri is {cfg.model.uri} but run {run} was scored with {was}; nothing was "
            f"published: re-score the run (batchscore score --run-id {run}) or restore model.uri"
        )
    if ref.alias is None:
        return
    tracking = tracking_uri()
    if reg.get("tracking_uri") and reg["tracking_uri"] != redact(tracking):
        raise ModelError(
            f"{TRACKING_ENV} now points at {redact(tracking)} but run {run} was resolved at "
            f"{reg['tracking_uri']}; nothing was published: use the same registry or re-score the run"
        )
    try:
        now = str(lookup(_client(tracking), ref, uri=cfg.model.uri, tracking=tracking).version)
    except NotInRegistry:
        raise ModelError(
            f"model alias {ref.name}@{ref.alias} no longer exists (it named version {reg.get('version')} "
            f"when run {run} was scored); nothing was published: re-score the run once the alias is "
            "set again"
        ) from None
    if now != str(reg.get("version")):
        raise ModelError(
            f"model alias {ref.name}@{ref.alias} moved from version {reg.get('version')} to version {now} "
            f"since run {run} was scored; nothing was published: re-score the run (batchscore score "
            f"--run-id {run}) to publish version {now}'s scores"
        )


def commit_metadata(score_report: dict[str, Any]) -> dict[str, str]:
    """The Delta commit metadata for a run's registered model (``batchscore.model_registry``): empty
    for a model given by path."""
    reg = score_report.get("registry")
    if not reg:
        return {}
    keep = ("uri", "name", "version", "alias", "run_id", "source", "artifact", "sha256", "tracking_uri")
    return {"model_registry": json.dumps({k: reg.get(k) for k in keep}, sort_keys=True)}
