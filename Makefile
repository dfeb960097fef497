# One command to set up and run the pipeline on the synthetic default (`make run`),
# one to set up and run the tests (`make test`). Setup is idempotent: a stamp file records it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test repro report bench clean-outputs

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel setuptools
	# torch first, pinned: 2.13.0 resolves to the CPU wheel; an unpinned torch would pull CUDA.
	$(BIN)/pip install -q torch==2.13.0 Cython==3.3.1 numpy==2.4.6
	# pydensecrf2 builds from source against the numpy/Cython above (imports as `pydensecrf`).
	$(BIN)/pip install -q --no-build-isolation pydensecrf2==1.1
	$(BIN)/pip install -q -r requirements.lock
	# The project itself, editable: `deeplab_core` imports from any directory and the
	# `deeplab-predict` command is on the venv's PATH (dependencies come from the lock above).
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, pydensecrf.densecrf, dvc, mlflow, prefect, great_expectations"
	cd / && $(CURDIR)/$(BIN)/deeplab-predict --help > /dev/null
	@touch $(STAMP)

# One Prefect server and one MLflow parent run for the whole `dvc repro` (pipelines/ops/repro.py).
repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipelines.ops.repro

report: setup
	$(BIN)/python -m pipelines.tools.report

run: repro report

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/bench_models.py
	$(BIN)/python benchmarks/bench_crf.py
