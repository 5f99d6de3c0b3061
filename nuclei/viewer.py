"""Show a results store in napari: each entry's image and its nuclei, with the measurements as label features.

    nuclei view results.zarr [ID ...]                                  # the command (`pip install 'nuclei[viewer]'`)
    >>> add_store_layers(napari.Viewer(), "results.zarr", ["plate1/a1"])   # doctest: +SKIP

The viewer is passed in (a `napari.Viewer`, or a headless `napari.components.ViewerModel`), so this module never
imports napari or Qt itself. Images that fit a screen are read whole; pyramids (s0, s1, ...) stay lazy (dask), so
napari reads only the tiles and the level it shows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from nuclei.errors import StoreError
from nuclei.store.query import NucleiStore

if TYPE_CHECKING:
    from napari.components import ViewerModel
    from napari.layers import Layer

log = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = 10  # without ids, show this many: every layer of a large store would exhaust memory
LABELS_OPACITY = 0.5  # the image stays visible under the nuclei

LayerData = np.ndarray | list[da.Array]  # one array, or a pyramid full resolution first


def add_store_layers(
    viewer: ViewerModel, store: str | Path | NucleiStore, ids: list[str] | None = None, *, grid: bool = True
) -> list[Layer]:
    """Add each entry's image and nuclei labels to ``viewer``; returns the layers added, entry by entry.

    ``ids``: the entries to show (StoreError naming any the store lacks); default the first
    `DEFAULT_MAX_ENTRIES`. With several entries and ``grid``, each entry gets its own tile of napari's grid.
    """
    nuclei_store = store if isinstance(store, NucleiStore) else NucleiStore(store)
    chosen = chosen_ids(nuclei_store, ids)
    was_empty = len(viewer.layers) == 0
    per_entry = [_add_entry(viewer, nuclei_store, image_id) for image_id in chosen]
    strides = {len(layers) for layers in per_entry}
    if grid and was_empty and len(per_entry) > 1 and len(strides) == 1:
        # Grid groups consecutive layers by stride, so each entry's image and labels share a tile.
        viewer.canvas.grid.stride = strides.pop()
        viewer.canvas.grid.enabled = True
    if was_empty and per_entry:
        viewer.reset_view()  # fit what was added (the whole grid) to the window at start
    return [layer for layers in per_entry for layer in layers]


def chosen_ids(store: NucleiStore, ids: list[str] | None) -> list[str]:
    """The ids asked for (all of them must exist), or the store's first `DEFAULT_MAX_ENTRIES`."""
    if ids is None:
        every = store.ids()
        if not every:
            raise StoreError(f"{store.url}: no complete entries to show")
        if len(every) > DEFAULT_MAX_ENTRIES:
            log.warning("%s holds %d images: showing the first %d (name ids to choose others)",
                        store.url, len(every), DEFAULT_MAX_ENTRIES)
        return every[:DEFAULT_MAX_ENTRIES]
    missing = [image_id for image_id in ids if image_id not in store]
    if missing:
        raise StoreError(f"{store.url}: no complete entry with id {', '.join(map(repr, missing))} "
                         f"(`nuclei query {store.url} list` lists them)")
    return list(ids)


def _add_entry(viewer: ViewerModel, store: NucleiStore, image_id: str) -> list[Layer]:
    """One entry's image layer(s) and nuclei labels layer, in the same (micrometre when known) space."""
    entry = store.backend.open_entry(image_id)  # the record read once, for every array below
    record, group = entry.record, entry.group
    image_levels = _pyramid(group)
    size = record.pixel_size_um or 1.0
    common: dict[str, Any] = {"scale": (size, size), "axis_labels": ("y", "x"),
                              "metadata": {"nuclei": record.as_dict()}}
    if record.pixel_size_um:
        common["units"] = ("micrometer", "micrometer")
    images = _add_image(viewer, image_id, image_levels, _windows(group), common)
    columns, table = entry.measurements()
    labels = add_nuclei_layer(viewer, _layer_data(_pyramid(_group(group, "labels/nuclei")), _yx),
                              f"{image_id} nuclei", columns, table, **common)
    return [*images, labels]


def add_nuclei_layer(viewer: ViewerModel, labels: LayerData, name: str, columns: list[str] | tuple[str, ...],
                     table: np.ndarray, **common: Any) -> Layer:
    """A Labels layer of nuclei with their measurements (one row per nucleus, ``columns`` as
    `nuclei.core.measure.COLUMNS` names them) as its features: a store's entry, or a layer the napari plugin
    has just segmented. ``common``: scale, units, metadata, as the image layer has them."""
    return viewer.add_labels(labels, name=name, features=_features(list(columns), table), opacity=LABELS_OPACITY,
                             visible=True, **common)


def _windows(group: zarr.Group) -> list[tuple[float, float]] | None:
    """The rendering window (start, end) of each channel, as the store wrote it (omero), or None."""
    attrs: Any = group.attrs.asdict()
    try:
        channels = attrs["ome"]["omero"]["channels"]
        return [(float(c["window"]["start"]), float(c["window"]["end"])) for c in channels]
    except (KeyError, TypeError, ValueError):
        return None


def _add_image(viewer: ViewerModel, image_id: str, levels: list[zarr.Array],
               windows: list[tuple[float, float]] | None, common: dict[str, Any]) -> list[Layer]:
    """RGB(A) as one colour layer, one channel as greyscale, any other count as one layer per channel; each
    opens with the store's rendering window (a dim 16-bit image is not shown dark)."""
    channels = int(levels[0].shape[0])
    if channels == 1:
        limits = windows[0] if windows else None
        added = viewer.add_image(_layer_data(levels, _yx), name=image_id, colormap="gray", contrast_limits=limits,
                                 **common)
    elif channels in (3, 4):
        limits = _rgb_limits(levels[0].dtype, windows)
        added = viewer.add_image(_layer_data(levels, _yxc), name=image_id, rgb=True, contrast_limits=limits,
                                 **common)
    else:
        added = viewer.add_image(_layer_data(levels, _yxc), name=[f"{image_id} [{c}]" for c in range(channels)],
                                 channel_axis=-1, contrast_limits=windows, **common)
    return list(added) if isinstance(added, list) else [added]


def _rgb_limits(dtype: np.dtype, windows: list[tuple[float, float]] | None) -> tuple[float, float]:
    """One window for all colours (their balance kept): the store's widest, else the file's range."""
    if windows:
        return min(w[0] for w in windows[:3]), max(w[1] for w in windows[:3])
    return _dtype_range(dtype)


def _group(entry: zarr.Group, path: str) -> zarr.Group:
    node = entry[path]
    if not isinstance(node, zarr.Group):
        raise StoreError(f"{entry.store}: {entry.path}/{path} is not a group")
    return node


def _pyramid(group: zarr.Group) -> list[zarr.Array]:
    """The levels of an OME-Zarr multiscale group, full resolution first (as its metadata lists them)."""
    attrs: Any = group.attrs.asdict()
    levels = [group[str(dataset["path"])] for dataset in attrs["ome"]["multiscales"][0]["datasets"]]
    arrays = [level for level in levels if isinstance(level, zarr.Array)]
    if len(arrays) != len(levels) or not arrays:
        raise StoreError(f"{group.store}: {group.path} does not list its levels as arrays")
    return arrays


def _layer_data(levels: list[zarr.Array], arrange: Any) -> LayerData:
    """One level: the array, read whole. Several: napari's multiscale list, read lazily tile by tile."""
    if len(levels) == 1:
        return np.asarray(arrange(np.asarray(levels[0][...])))
    return [arrange(da.from_zarr(level)) for level in levels]


def _yx(array: Any) -> Any:
    """(c, y, x) with one channel, or (y, x) -> (y, x)."""
    return array[0] if array.ndim == 3 else array


def _yxc(array: Any) -> Any:
    """(c, y, x) -> (y, x, c): napari wants colour last."""
    return array.transpose(1, 2, 0)


def _dtype_range(dtype: np.dtype) -> tuple[float, float]:
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
    return 0.0, 1.0  # float images are taken as [0, 1], as `measure` and the model do


def _features(columns: list[str], table: np.ndarray) -> dict[str, np.ndarray]:
    """The stored measurements, one row per nucleus (the same columns the export writes). napari maps label
    values to rows by the `index` column (without it, row i would be label i and row 0 the background), so it
    holds the label ids."""
    features = {name: table[:, i] for i, name in enumerate(columns)}
    return {"index": features["label"].astype(np.int64), **features}
