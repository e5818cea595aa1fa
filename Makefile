# batchscore: `make demo` and `make test` work on a fresh machine (Python 3.11+, Java 17+, redis-server).
SHELL := /bin/bash
PY ?= python3
REPO := $(abspath .)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export PYSPARK_PYTHON := $(REPO)/$(VPY)
export PYSPARK_DRIVER_PYTHON := $(REPO)/$(VPY)

.PHONY: demo test test-unit bench gpu-check mutants check-prereqs env clean

-include mk/airflow.mk
-include mk/package.mk

check-prereqs:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
	  || { echo "batchscore needs Python 3.11+ (found $$($(PY) --version 2>&1)); install python3.11"; exit 1; }
	@command -v java >/dev/null || { echo "batchscore needs Java 17+ for Spark: apt-get install openjdk-17-jre-headless"; exit 1; }
	@v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); [ "$${v:-0}" -ge 17 ] \
	  || { echo "batchscore needs Java 17+ (found $$v): apt-get install openjdk-17-jre-headless"; exit 1; }
	@command -v redis-server >/dev/null || { echo "batchscore needs redis-server: apt-get install redis-server"; exit 1; }

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (an unpinned torch pulls GBs of CUDA packages)
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[spark,torch,dev]'
	@rm -f $(VENV)/.stamp-*; touch $@

env: check-prereqs $(STAMP)

demo: env
	$(VPY) -m jobs.demo --model-config conf/models/demo.yaml

test-unit: env
	$(VPY) -m pytest tests/unit -q

test: env
	$(VPY) -m pytest -q
	@if grep -q '^test-dags:' mk/airflow.mk 2>/dev/null; then $(MAKE) --no-print-directory test-dags; fi

bench: env
	$(VPY) benchmarks/run.py

# The scoring core on a GPU without Spark (benchmarks/README.md, "GPU check"); GPU_CHECK_ARGS=--device auto on CPU.
gpu-check: env
	$(VPY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Deliberate bugs of the publish protocol, each applied alone: the tests must catch every one (mutants/run.sh).
mutants: env
	PY=$(REPO)/$(VPY) bash mutants/run.sh

clean:
	rm -rf .batchscore dist build *.egg-info
