"""Airflow DAGs: one per conf/models/*.yaml (score -> validate -> publish), via the job environment's spark-submit."""

from __future__ import annotations

from _lib.dag_factory import build_all

globals().update(build_all())
