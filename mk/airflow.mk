# The Airflow environment, kept apart from the job environment (.venv). Included by the Makefile.
AF_VENV := .venv-airflow
AF_STAMP := $(AF_VENV)/.stamp-$(shell cksum < requirements/airflow.txt | cut -d' ' -f1)
AIRFLOW_HOME_DIR := $(REPO)/.batchscore/airflow-home

.PHONY: airflow-env test-dags

$(AF_STAMP): requirements/airflow.txt
	@test -x $(AF_VENV)/bin/python || $(PY) -m venv $(AF_VENV)
	$(AF_VENV)/bin/python -m pip install -q --upgrade pip
	$(AF_VENV)/bin/python -m pip install -q -r requirements/airflow.txt
	@rm -f $(AF_VENV)/.stamp-*; touch $@

airflow-env: $(AF_STAMP)

# The DAG tests run in the Airflow environment and launch the job environment's spark-submit.
test-dags: airflow-env env
	AIRFLOW_HOME=$(AIRFLOW_HOME_DIR) AIRFLOW__CORE__DAGS_FOLDER=$(REPO)/dags AIRFLOW__CORE__LOAD_EXAMPLES=False \
	  BATCHSCORE_JOB_ENV=$(REPO)/$(VENV) \
	  $(AF_VENV)/bin/python -m pytest tests/dags -q -p no:cacheprovider
