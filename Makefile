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

# A Prefect server on one machine: SQLite under $(PREFECT_HOME), bound to 127.0.0.1 (see README "Deployments").
PREFECT_PORT ?= 4200
POOL ?= nuclei-local
API_URL := http://127.0.0.1:$(PREFECT_PORT)/api

.PHONY: install demo test test-fast lint typecheck clean server worker deploy

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[train,dev]"
	touch $@

install: $(VENV)/.installed

demo: install  ## train a small model on the bundled samples, export it, segment the samples, query the store
	$(NUCLEI) demo --out runs/demo

# The napari tests run in a process of their own: TensorFlow and napari's Qt/OpenGL canvas in one process abort
# it at exit ("free(): invalid pointer"), as the plugin runs its fine-tunes in a process of their own.
test: lint typecheck  ## ruff, import contracts, mypy, then the whole suite (real TensorFlow, ORT, Dask, Zarr, Prefect)
	$(PY) -m pytest --durations=15 --ignore=tests/test_napari_loop.py $(PYTEST_ARGS)
	$(PY) -m pytest tests/test_napari_loop.py $(PYTEST_ARGS)

test-fast: install  ## the tests not marked slow: no Dask worker processes, Prefect runs or training (ONNX Runtime, stores and CLI subprocesses still real)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

server: install  ## Prefect server + UI on http://127.0.0.1:$(PREFECT_PORT) (leave it running)
	PREFECT_UI_API_URL=$(API_URL) PREFECT_API_URL=$(API_URL) \
		$(VENV)/bin/prefect server start --host 127.0.0.1 --port $(PREFECT_PORT)

worker: install  ## the process work pool and one worker for it (leave it running)
	PREFECT_API_URL=$(API_URL) $(VENV)/bin/prefect work-pool create $(POOL) --type process --overwrite
	PREFECT_API_URL=$(API_URL) $(VENV)/bin/prefect worker start --pool $(POOL)

deploy: install  ## register deployments/prefect.yaml: train/sample, train/dsb2018, segment/watch-folder
	mkdir -p incoming results
	PREFECT_API_URL=$(API_URL) $(VENV)/bin/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

lint: install
	$(VENV)/bin/ruff check nuclei flows tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(VENV)/bin/mypy nuclei flows

clean:
	rm -rf runs .prefect .pytest_cache
