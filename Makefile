# Two commands for a new user:  `make demo` (the main job on embedded defaults) and `make test`.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
NUCLEI := $(VENV)/bin/nuclei
PYTEST_ARGS ?=

# Offline, one machine: no telemetry, quiet TensorFlow, Prefect state kept inside the project.
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TF_CPP_MIN_LOG_LEVEL := 3
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed

demo: install  ## train a small model on the bundled samples, export it, segment the samples, query the store
	$(NUCLEI) demo --out runs/demo

test: install  ## the whole test suite (real TensorFlow, ONNX Runtime, Dask, Zarr and Prefect)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check nuclei flows tests benchmarks
	$(VENV)/bin/mypy nuclei flows

clean:
	rm -rf runs .prefect .pytest_cache
