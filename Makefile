# Everything a developer or CI does goes through these targets.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
export PYTHONHASHSEED := 0

.PHONY: venv test test-fast chaos demo bench lint clean

venv:
	@bash tools/bootstrap.sh

# everything (CI), then the 25 slowest tests; each test has a timeout (pytest-timeout, pyproject.toml).
# Two pytest-xdist workers, a test file each at a time (module fixtures are built once), the longest files
# first (tests/conftest.py LONGEST_FIRST): most tests run one single-threaded process, so one worker alone
# leaves the second core idle (docs/performance.md "Test suite").
PYTEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 tests

# the edit-test loop: every test not marked slow (> ~20 s; tests/conftest.py marks other owners' files), < 5 min
test-fast: venv
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10 -m "not slow" tests

# kill -9 torch runs 20 (1 process) + 6 (2 processes) times, 2-process megatron and DeepSpeed runs 5 times each;
# `make test` runs a 3 + 2 + 1 + 1 kill version (tests/train/test_chaos.py)
chaos: venv
	NCA_SCALE_CHAOS=1 $(PY) -m pytest -q -s tests/train/test_chaos.py

# The study end to end on the embedded defaults (CPU, local files, submitit's local executor): NCA figures, then
# the demo sweep (data prep, NCA pre-pre-training of two tiny sizes, transfer to web text vs scratch, two seeds;
# configs/sweeps/demo.yaml) and its report. A relaunch skips finished runs.
demo: venv
	$(BIN)/nca-scale nca stats configs/nca/tiny.yaml rules=1000 seed=0
	$(BIN)/nca-scale nca show configs/nca/tiny.yaml out=runs/demo/figures
	$(BIN)/nca-scale sweep launch configs/sweeps/demo.yaml
	$(BIN)/nca-scale sweep status configs/sweeps/demo.yaml
	$(BIN)/nca-scale report runs/sweeps/demo

bench: venv
	$(PY) benchmarks/nca_throughput.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/data_wait.py
	$(PY) benchmarks/checkpoint_blocking.py

lint: venv
	$(BIN)/ruff check nca_scale tests benchmarks tools

clean:
	rm -rf runs .pytest_cache
