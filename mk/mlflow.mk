# The MLflow tracking server the registry tests run (.venv-mlflow), kept apart from the job
# environment (.venv). Included by the Makefile; `make -f mk/mlflow.mk mlflow-env` also works alone.
#   make mlflow-env   create/update .venv-mlflow with ML_SERVER (stamp-guarded)
# `mlflow server` needs the full mlflow package (Flask, SQLAlchemy, alembic, scikit-learn...), which
# caps pyarrow (<26 in 3.17); the job environment has only the client (the `mlflow` extra:
# mlflow-skinny). tests/integration/mlflow_server.py starts .venv-mlflow/bin/mlflow server.

# Keep the including Makefile's default goal (its first target), not this file's first rule.
_ML_SAVED_GOAL := $(.DEFAULT_GOAL)

PY ?= python3
ML_VENV := .venv-mlflow
ML_SERVER := mlflow==3.17.2
ML_STAMP := $(ML_VENV)/.stamp-$(shell echo '$(ML_SERVER)' | cksum | cut -d' ' -f1)

.PHONY: mlflow-env

$(ML_STAMP):
	@test -x $(ML_VENV)/bin/python || $(PY) -m venv $(ML_VENV)
	$(ML_VENV)/bin/python -m pip install -q --upgrade pip
	$(ML_VENV)/bin/python -m pip install -q '$(ML_SERVER)'
	@rm -f $(ML_VENV)/.stamp-*; touch $@

mlflow-env: $(ML_STAMP)

.DEFAULT_GOAL := $(_ML_SAVED_GOAL)
