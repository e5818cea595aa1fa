# Cluster packaging: `make package` builds what Spark executors need. Included by the Makefile.
#
#   dist/batchscore-<version>-py3-none-any.whl   the code: the one package batchscore (with batchscore.jobs, .udfs, .validation)
#   dist/batchscore.zip                           the same wheel as .zip, for spark-submit --py-files
#                                                 (PySpark puts only .zip/.egg/.jar py-files on the
#                                                 executors' sys.path, never a .whl)
#   dist/batchscore-env.tar.gz                    the job environment with that wheel installed
#                                                 (pandas, pyarrow, onnxruntime, torch, deltalake, ...):
#                                                 spark-submit --archives dist/batchscore-env.tar.gz#env
#                                                 --conf spark.pyspark.python=./env/bin/python
#
# The packed environment is a hard-linked copy of .venv (the environment the tests ran in) with the
# editable install replaced by the wheel, packed with venv-pack. Spark's own jars are left out: the
# cluster's Spark provides the JVM side and the pyspark Python package. The env's `python` is a
# symlink to this machine's interpreter prefix: the nodes need the same Python version there, or
# pass PACK_PYTHON_PREFIX=/usr (where the nodes' python3.11 lives). See docs/cluster.md.
#
#   make package                      wheel + env (with torch, for TorchScript models)
#   make package PACK_TORCH=no        ONNX-only env, much smaller
#   make wheel                        only the wheel (and its .zip)

PACK_WORK := build/pack-env
PACK_TOOL := build/venv-pack-tool
PACK_OUT := dist/batchscore-env.tar.gz
PACK_TORCH ?= yes
PACK_LEVEL ?= 1
PACK_PYTHON_PREFIX ?=
PACK_EXCLUDES := --exclude 'lib/python*/site-packages/pyspark/jars/*' --exclude '.stamp-*' \
  --exclude 'lib/python*/site-packages/pyspark/examples/*'

.PHONY: package wheel

wheel: env
	@rm -rf dist/batchscore-*.whl dist/batchscore.zip build/lib build/bdist.*  # no stale modules in the wheel
	$(VPY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	cp dist/batchscore-*.whl dist/batchscore.zip
	@ls -l dist/batchscore-*.whl

$(PACK_TOOL)/bin/venv-pack:
	$(PY) -m venv $(PACK_TOOL)
	$(PACK_TOOL)/bin/python -m pip install -q venv-pack==0.2.0

package: wheel $(PACK_TOOL)/bin/venv-pack
	@rm -rf $(PACK_WORK); mkdir -p build
	@# hard links: seconds and no extra disk; pip below only unlinks or adds files in the copy
	cp -al $(VENV) $(PACK_WORK)
	$(PACK_WORK)/bin/python -m pip uninstall -q -y batchscore
	@if [ "$(PACK_TORCH)" = no ]; then $(PACK_WORK)/bin/python -m pip uninstall -q -y torch; fi
	$(PACK_WORK)/bin/python -m pip install -q --no-deps dist/batchscore-*.whl
	$(PACK_TOOL)/bin/venv-pack -q -f -p $(PACK_WORK) -o $(PACK_OUT) --compress-level $(PACK_LEVEL) \
	  $(PACK_EXCLUDES) $(if $(PACK_PYTHON_PREFIX),--python-prefix $(PACK_PYTHON_PREFIX))
	@rm -rf $(PACK_WORK); chmod 644 $(PACK_OUT)
	@ls -lh $(PACK_OUT)
