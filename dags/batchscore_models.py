"""Airflow DAGs ``batchscore_<name>``: one per conf/models/*.yaml, score -> validate -> publish.

Each task spark-submits a batchscore job with the job environment's spark-submit; see
dags/README.md. Parse-time work: read dags/dag_settings.yaml and the model YAMLs, nothing more.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Airflow puts its DAGS_FOLDER on sys.path, but not a folder parsed from elsewhere (a DAG bundle
# subfolder, DagBag(dag_folder=...)): make `_lib` importable either way.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _lib.dag_factory import build_all  # noqa: E402

globals().update(build_all())
