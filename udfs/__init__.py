"""Executor-side scoring: model backends, the per-worker model cache and the prediction UDF.

Must not import ``jobs``, ``pydantic`` or ``redis``; model libraries are imported lazily inside
the backends so the driver never pays for them unless it checks a model.
"""
