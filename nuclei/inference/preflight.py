"""Checks a segmentation run makes before anything heavy starts: cheap imports only, so a user error is one
line in well under a second or two (no ONNX Runtime, no Dask, no Prefect, no store created)."""

from __future__ import annotations

import os
from pathlib import Path

from nuclei.config import SegmentConfig
from nuclei.core.tiling import check_tile_size, overlap_for
from nuclei.errors import InputError, RequestError, StoreError
from nuclei.modeldir import NO_MODEL, resolve_model, resolve_stained_model

GLOB_CHARS = "*?["
THREAD_VARIABLES = ("NUCLEI_THREADS", "OMP_NUM_THREADS")


def environment_threads() -> int | None:
    """Threads the environment asks for: $NUCLEI_THREADS, else $OMP_NUM_THREADS (OpenMP's nested form "4,2" is
    valid: its first level, the outer one, is this process's); None when neither is set. A value that is no
    whole number of threads, 1 or more, raises RequestError naming the variable (it was an int() traceback)."""
    for variable in THREAD_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if not value:
            continue
        levels = [level.strip() for level in value.split(",")] if variable == "OMP_NUM_THREADS" else [value]
        if not all(level.isdecimal() and int(level) >= 1 for level in levels):
            form = "a whole number, 1 or more" + (", or one per nesting level: 4,2" if len(levels) > 1 or
                                                  variable == "OMP_NUM_THREADS" else "")
            raise RequestError(f"{variable}={value!r}: not a number of threads ({form}); set it so, or unset it")
        return int(levels[0])
    return None


def preflight(config: SegmentConfig) -> SegmentConfig:
    """Cheap checks before anything heavy starts (no session, no cluster, no store created): the model
    directory reads, every local input exists, the store is not a file. Returns the config with local paths
    made absolute, so tasks on any worker find them, and the stained-tissue model settled (a path or "none").
    Raises NucleiError naming the problem."""
    environment_threads()
    for spec in config.inputs:
        if "://" in spec and not spec.startswith("file://"):
            continue
        local = spec.removeprefix("file://")
        if not Path(local).exists() and not any(c in local for c in GLOB_CHARS):
            raise InputError(local, "input does not exist")
    store = config.store
    if "://" not in store:
        if "::" in store:  # fsspec splits there: a chained URL (zip://::x.zip), never this folder
            raise StoreError(f"{store}: '::' in a local store path reads as a chained fsspec URL; rename the folder")
        if Path(store).is_file():
            raise StoreError(f"{store}: is a file, not a store folder")
        store = os.path.abspath(store)
    stained = resolve_stained_model(config.stained_model, config.model)
    for model in (resolve_model(config.model), stained):
        if model is None:
            continue
        try:
            check_tile_size(config.tile_size, overlap_for(model.receptive_field, model.pad_multiple),
                            model.pad_multiple)
        except ValueError as exc:
            raise InputError("--tile-size", str(exc)) from exc
    inputs = [s if "://" in s else os.path.abspath(s) for s in config.inputs]
    model_path = os.path.abspath(config.model) if config.model and "://" not in config.model else config.model
    return config.model_copy(update={"store": store, "inputs": inputs, "model": model_path,
                                     "stained_model": str(stained.path) if stained else NO_MODEL})
