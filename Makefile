# Two commands on a fresh machine:  make demo   |   make test
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo lidc-demo test test-fast lint setup clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch first, so that the range in pyproject.toml is already satisfied
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_CPU)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/monai-pipeline demo --out demo_output

# LIDC end to end on studies made from the real XML reads in ../shared/lidc (docs/lidc.md)
lidc-demo: $(STAMP)
	$(BIN)/monai-pipeline lidc-demo --out lidc_demo_output

# the linter first (line length included): a violation fails the run, as it fails CI
test: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

# the suite without the end-to-end tests marked slow (subprocesses, training, real CT)
test-fast: lint
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check monai_pipeline tests benchmarks scripts bundles

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_training.py

clean:
	rm -rf $(VENV) demo_output lidc_demo_output .pytest_cache
