"""nuclei: batch nuclei segmentation.

Train a Keras U-Net (``nuclei[train]``), export it to ONNX, segment image folders on Dask with ONNX Runtime into
OME-Zarr stores, and query masks, labels and per-nucleus measurements from those stores.

    >>> import nuclei
    >>> store = nuclei.open_store("results.zarr")      # doctest: +SKIP
    >>> store.summary()                                 # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use so `import nuclei` stays light (and never pulls in TensorFlow).
_LAZY = {
    "open_store": "nuclei.store.query",
    "NucleiStore": "nuclei.store.query",
    "segment": "nuclei.inference.run",
    "load_dataset": "nuclei.io.datasets",
    "read_image": "nuclei.io.images",
    "load_model_dir": "nuclei.modeldir",
    "Engine": "nuclei.inference.engine",
    "Thresholds": "nuclei.core.postprocess",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nuclei' has no attribute {name!r}")
