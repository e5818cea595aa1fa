"""Executor side: what runs inside Spark tasks (scoring, staged writes, fragment reads, the Redis load).

The public entry is :func:`predict_udf` (:mod:`batchscore.udfs.predict`): a model as a vectorized
iterator UDF applied to columns. The jobs use :func:`~batchscore.udfs.scoring.with_predictions`
and :func:`~batchscore.udfs.file_scan.with_predictions_from_files` (DataFrame -> key + scores on
``mapInArrow``). Never imports the driver side, the validation gate, pydantic or redis (the Redis
load, :mod:`batchscore.udfs._redis_load`, alone talks to Redis); model libraries are imported
lazily inside the backends. Private modules (underscored): ``_arrow_input`` (Arrow -> float32
matrix), ``_staged_write``, ``_fragments``, ``_redis_load``.
"""

from typing import Any

__all__ = ["ModelRef", "PredictUDF", "predict_udf"]


def __getattr__(name: str) -> Any:  # lazy: importing a backend module does not import pandas/pyspark UDF code
    if name in ("predict_udf", "PredictUDF"):
        from batchscore.udfs import predict

        return getattr(predict, name)
    if name == "ModelRef":
        from batchscore.udfs.model_ref import ModelRef

        return ModelRef
    raise AttributeError(f"module 'batchscore.udfs' has no attribute {name!r}")
