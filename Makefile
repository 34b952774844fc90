# cvgl-keras: `make demo` and `make test` are the two commands a fresh clone needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast demo bench clean

setup: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

# Two workers: the suite is mostly TensorFlow graph building, which parallelises well across processes.
test: setup
	$(PY) -m pytest -n 2 --dist worksteal

# The fast lane for the edit loop: everything but the tests marked slow (learning, resume, golden step, demo).
test-fast: setup
	$(PY) -m pytest -n 2 --dist worksteal -m "not slow"

demo: setup
	$(PY) -m experiments.demo --out demo_out

bench: setup
	$(PY) -m benchmarks.data_bench
	$(PY) -m benchmarks.synth_bench --quick
	$(PY) -m benchmarks.retrieval_bench

clean:
	rm -rf demo_out .pytest_cache
