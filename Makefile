# trainwise: `make demo` runs the comparison, `make test` runs the fast tests. Both create .venv if needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all slurm-test bench ui lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,export]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/trainwise train experiment=compare
	@echo "Open the runs: make ui"

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

# The slow SLURM tests on a two-node cluster started on this machine (needs root; installs slurm-wlm and munge
# with apt where it can).
slurm-test: $(STAMP)
	command -v slurmctld >/dev/null || command -v /usr/sbin/slurmctld >/dev/null || \
	  (command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge) || \
	  echo "slurm-wlm and munge are not installed and apt-get could not install them: the tests will skip"
	$(BIN)/python -m pytest -q tests/test_slurm.py

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

ui: $(STAMP)
	$(BIN)/trainwise ui

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf outputs multirun mlflow.db mlflow.db.locks mlartifacts lightning_logs trainwise-report .pytest_cache .ruff_cache build dist
