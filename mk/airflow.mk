# The Airflow environment (.venv-airflow), kept apart from the job environment (.venv), and the
# DAG tests. Included by the Makefile; `make -f mk/airflow.mk airflow-env` also works on its own.
#   make airflow-env   create/update .venv-airflow from requirements/airflow.txt (stamp-guarded)
#   make test-dags     airflow db migrate (SQLite under .batchscore/airflow-home), then tests/dags
#                      (DAG_TEST_ARGS='-m "not e2e"' skips the minutes-long runs: dag.test() of the
#                      real jobs and the real scheduler + dag-processor + api-server test)
#   make airflow-lock  re-resolve AF_TOP in a scratch venv and rewrite requirements/airflow.txt

# Keep the including Makefile's default goal (its first target), not this file's first rule.
_AF_SAVED_GOAL := $(.DEFAULT_GOAL)

PY ?= python3
REPO ?= $(abspath .)
JOB_VENV ?= .venv
AF_VENV := .venv-airflow
AF_REQ := requirements/airflow.txt
AF_STAMP := $(AF_VENV)/.stamp-$(shell cksum < $(AF_REQ) | cut -d' ' -f1)
AF_HOME := $(REPO)/.batchscore/airflow-home
DAG_TEST_ARGS ?=
AF_TOP := apache-airflow==3.3.2 apache-airflow-providers-apache-spark==6.3.4 pyyaml pytest pytest-timeout
# What every Airflow command here runs with: a private SQLite home, this repo's dags/ and job env.
AF_ENV := AIRFLOW_HOME=$(AF_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(REPO)/dags \
  AIRFLOW__CORE__LOAD_EXAMPLES=False BATCHSCORE_JOB_ENV=$(REPO)/$(JOB_VENV)

.PHONY: airflow-env airflow-db airflow-lock test-dags

$(AF_STAMP): $(AF_REQ)
	@test -x $(AF_VENV)/bin/python || $(PY) -m venv $(AF_VENV)
	$(AF_VENV)/bin/python -m pip install -q --upgrade pip
	$(AF_VENV)/bin/python -m pip install -q -r $(AF_REQ)
	@rm -f $(AF_VENV)/.stamp-*; touch $@

airflow-env: $(AF_STAMP)

airflow-db: airflow-env
	@mkdir -p $(AF_HOME)
	@$(AF_ENV) $(AF_VENV)/bin/airflow db migrate > $(AF_HOME)/db-migrate.log 2>&1 \
	  || { tail -40 $(AF_HOME)/db-migrate.log; echo "airflow db migrate failed (log: $(AF_HOME)/db-migrate.log)"; exit 1; }

# The DAG tests run in .venv-airflow and reach the job environment only through its spark-submit
# and CLI (the end-to-end test needs `env`, the including Makefile's job-environment target).
test-dags: airflow-db env
	$(AF_ENV) BATCHSCORE_AIRFLOW_DB_READY=1 $(AF_VENV)/bin/pytest tests/dags -q -p no:cacheprovider $(DAG_TEST_ARGS)

airflow-lock:
	rm -rf .batchscore/airflow-lock-venv && $(PY) -m venv .batchscore/airflow-lock-venv
	.batchscore/airflow-lock-venv/bin/python -m pip install -q --upgrade pip
	.batchscore/airflow-lock-venv/bin/python -m pip install -q $(AF_TOP)
	{ sed -n '1,/^# ---- lock/p' $(AF_REQ) | sed 's/^# Top level: .*/# Top level: $(AF_TOP)/'; \
	  .batchscore/airflow-lock-venv/bin/python -m pip freeze --exclude-editable; } > $(AF_REQ).new
	mv $(AF_REQ).new $(AF_REQ) && rm -rf .batchscore/airflow-lock-venv

.DEFAULT_GOAL := $(_AF_SAVED_GOAL)
