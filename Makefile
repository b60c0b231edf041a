# attnkit — `make demo` (the main job) and `make test`; both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the benchmarks' own venv: the peers (sentence-transformers with ONNX Runtime and OpenVINO) pin
# other versions than the test venv keeps
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed

.PHONY: demo test test-fast lint bench docs-figures wheel-smoke clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/attnkit demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks docs

$(BENCH_STAMP): pyproject.toml constraints.txt
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q -c constraints.txt -e '.[bench]'
	touch $(BENCH_STAMP)

# robustness.py runs the learned-outcome tests, with the test venv's pytest
bench: $(BENCH_STAMP) $(STAMP)
	HF_HUB_OFFLINE=1 ATTNKIT_TEST_PYTHON=$(abspath $(BIN))/python $(BENCH_VENV)/bin/python benchmarks/run_all.py

wheel-smoke: $(STAMP)
	PY=$(BIN)/python bash .ci/wheel-smoke

docs-figures: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python docs/make_figures.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) attnkit-demo .pytest_cache
