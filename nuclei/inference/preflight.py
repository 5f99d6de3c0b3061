"""Checks a segmentation run makes before anything heavy starts: cheap imports only, so a user error is one
line in well under a second or two (no ONNX Runtime, no Dask, no Prefect, no store created)."""

from __future__ import annotations

import os
from pathlib import Path

from nuclei.config import SegmentConfig
from nuclei.core.tiling import check_tile_size, overlap_for
from nuclei.errors import InputError, StoreError
from nuclei.modeldir import NO_MODEL, resolve_model, resolve_stained_model

GLOB_CHARS = "*?["


def preflight(config: SegmentConfig) -> SegmentConfig:
    """Cheap checks before anything heavy starts (no session, no cluster, no store created): the model
    directory reads, every local input exists, the store is not a file. Returns the config with local paths
    made absolute, so tasks on any worker find them, and the stained-tissue model settled (a path or "none").
    Raises NucleiError naming the problem."""
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
