"""ONNX Runtime inference: one session per process, honest providers, padding, tiling and batching.

Never imports TensorFlow. Sessions are cached per process (built lazily on first use, never pickled), so a
Dask worker builds its session once and reuses it for every image it gets.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np
import onnxruntime as ort

from nuclei.config import DEFAULT_PROVIDERS, DEFAULT_TILE_SIZE
from nuclei.core.modality import is_stained_brightfield
from nuclei.core.normalize import Scaling, measure_scaling
from nuclei.core.thresholds import Thresholds
from nuclei.core.tiling import check_tile_size, overlap_for, pad_to_multiple, predict_tiled
from nuclei.errors import ModelError
from nuclei.modeldir import ModelDir

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
AUTO = "auto"  # diameter measured per image (`nuclei.inference.sizing`)


@functools.cache
def cuda_device_count() -> int:
    """GPUs the CUDA driver really reports (onnxruntime-gpu lists CUDA even on machines without one)."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def usable_providers(requested: Sequence[str] = DEFAULT_PROVIDERS) -> list[str]:
    """The requested providers this machine can really run, in order; CPU is always the last resort."""
    available = set(ort.get_available_providers())
    gpu_ok = cuda_device_count() > 0
    chosen = [p for p in requested if p in available and (gpu_ok or p not in GPU_PROVIDERS)]
    return chosen if "CPUExecutionProvider" in chosen else [*chosen, "CPUExecutionProvider"]


def default_threads() -> int:
    """Threads for one session: $NUCLEI_THREADS, else $OMP_NUM_THREADS's first level (a Dask worker sets it),
    else the cores this process may use. A value that is no number of threads raises RequestError naming it."""
    from nuclei.inference.preflight import environment_threads

    return environment_threads() or max(1, len(os.sched_getaffinity(0)))


@functools.cache
def _session(onnx_path: str, onnx_sha256: str, providers: tuple[str, ...], threads: int) -> ort.InferenceSession:
    """One session per (model, providers, threads) per process; the hash keys out a replaced file."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(onnx_path, options, providers=list(providers))
    except Exception as exc:  # noqa: BLE001 - ORT raises several types for a bad file
        raise ModelError(f"{onnx_path}: not a loadable ONNX model ({exc})") from exc
    _check_signature(session, onnx_path)
    log.info("ONNX Runtime session for %s: providers %s, %d threads", onnx_path, session.get_providers(), threads)
    return session


def _check_signature(session: ort.InferenceSession, onnx_path: str) -> None:
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)" or len(inputs[0].shape) != 4 or inputs[0].shape[3] != 3:
        found = [(i.name, i.type, i.shape) for i in inputs]
        raise ModelError(f"{onnx_path}: expected one NHWC float32 input with 3 channels, found {found}")


def rescale(image: np.ndarray, zoom: float = 1.0, size: tuple[int, int] | None = None) -> np.ndarray:
    """Resize by ``zoom`` (or to ``size``): area averaging to shrink, bilinear to enlarge; keeps the channels."""
    height, width = size or (max(1, round(image.shape[0] * zoom)), max(1, round(image.shape[1] * zoom)))
    if image.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        image = image.astype(np.float32)
    shrink = height * width < image.shape[0] * image.shape[1]
    channels = image.shape[2] if image.ndim == 3 else 0
    if channels > 4:  # OpenCV resizes at most 4 channels at once
        return np.stack([rescale(image[..., c], size=(height, width)) for c in range(channels)], axis=-1)
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return resized.reshape(height, width, channels) if channels else resized


@dataclass(frozen=True)
class Engine:
    """Predicts per-pixel probabilities (H, W, C) for images of any size with one ONNX model."""

    model: ModelDir
    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    threads: int = 0
    tile_size: int = DEFAULT_TILE_SIZE
    batch_size: int = 8
    int8: bool = True
    # Nuclei of this many px across are rescaled to the model's training scale; "auto": measured per image by
    # `sizing.label_image` (this engine then predicts as is, and a copy with the measured diameter rescales).
    diameter: float | Literal["auto"] | None = None
    tta: bool = False  # test-time flips: the mean over the image and its three mirror images
    # Colour brightfield images (H&E-like stained tissue) go to this model when set (`for_image`).
    stained: ModelDir | None = None
    # Objects smaller than a disc this many px across (in the image's pixels) are dropped: debris and specks,
    # which a network trained on nuclei from 8 to 100 px across cannot tell from small nuclei by size alone.
    min_diameter: float | None = None
    # Small bright isolated specks are dropped after labelling (`nuclei.core.debris`, in `sizing.nuclei_of`).
    drop_debris: bool = True

    @property
    def zoom(self) -> float:
        """Factor images are resized by before the model (1: as they are)."""
        trained = self.model.nucleus_diameter
        if self.diameter == AUTO or not self.diameter or not trained:
            return 1.0
        return trained / float(self.diameter)

    @property
    def thresholds(self) -> Thresholds:
        """The model's thresholds in the image's pixels: the minimum nucleus size scaled when rescaling, and raised
        to a disc of ``min_diameter`` when one is given."""
        found = self.model.thresholds
        min_size = max(1, round(found.min_size / self.zoom**2)) if self.zoom != 1.0 else found.min_size
        if self.min_diameter:
            min_size = max(min_size, math.ceil(math.pi / 4 * self.min_diameter**2))
        return replace(found, min_size=min_size) if min_size != found.min_size else found

    def __post_init__(self) -> None:
        check_tile_size(self.tile_size, self.overlap, self.model.pad_multiple)
        if self.stained is not None:
            _ = self.stained_engine  # the same checks for the second model, before any image

    @functools.cached_property
    def stained_engine(self) -> Engine:
        assert self.stained is not None
        return replace(self, model=self.stained, stained=None)

    def for_image(self, image: np.ndarray) -> Engine:
        """The engine that segments ``image``: the stained-tissue model's for a colour brightfield image when one
        is set (`nuclei.core.modality`), else this one."""
        if self.stained is None or not is_stained_brightfield(image):
            return self
        return self.stained_engine

    @property
    def overlap(self) -> int:
        return overlap_for(self.model.receptive_field, self.model.pad_multiple)

    @property
    def precision(self) -> str:
        """int8 on CPU when the model ships a validated int8 variant (about 1.6x faster), else float32."""
        cpu_only = usable_providers(self.providers) == ["CPUExecutionProvider"]
        return "int8" if self.int8 and cpu_only and self.model.int8_sha256 else "float32"

    @property
    def session(self) -> ort.InferenceSession:
        int8 = self.precision == "int8"
        return _session(
            str(self.model.int8_path if int8 else self.model.onnx_path),
            str(self.model.int8_sha256 if int8 else self.model.onnx_sha256),
            tuple(usable_providers(self.providers)), self.threads or default_threads(),
        )

    @property
    def output_key(self) -> str:
        """A hash of everything that decides the labels this engine's images get: the ONNX file that runs
        (float32 or int8), the thresholds (min size rescaled with --diameter), the zoom, the normalisation and whether
        debris is dropped.
        A store entry is current only while its record carries the same key (tile size is left out: tiled
        equals untiled)."""
        int8 = self.precision == "int8"
        parts = {
            "onnx": self.model.int8_sha256 if int8 else self.model.onnx_sha256, "precision": self.precision,
            "thresholds": self.thresholds.as_dict(), "zoom": round(self.zoom, 6),
            "normalization": self.model.normalization.model_dump(), **({"tta": True} if self.tta else {}),
            **({"diameter": AUTO} if self.diameter == AUTO else {}),
            **({"debris": "dropped"} if self.drop_debris else {}),
            **({"stained": self.stained_engine.output_key} if self.stained is not None else {}),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def session_providers(self) -> list[str]:
        """The providers the session really got (what ran, not what was asked for)."""
        return list(self.session.get_providers())

    def _run(self, inputs: Sequence[np.ndarray], options: ort.RunOptions | None = None) -> np.ndarray:
        """One session run on already normalised float32 RGB inputs of one shape (with ``tta``, their mirror
        images run in the same batch and the outputs, flipped back, are averaged)."""
        session = self.session
        batch = np.stack(inputs)
        if not self.tta:
            return session.run(None, {session.get_inputs()[0].name: batch}, options)[0]
        flips = [(), (1,), (2,), (1, 2)]  # none, vertical, horizontal, both: the shape stays, so one batch
        mirrored = np.concatenate([np.flip(batch, axis) if axis else batch for axis in flips])
        out = session.run(None, {session.get_inputs()[0].name: mirrored}, options)[0]
        parts = np.split(out, len(flips))
        return np.mean([np.flip(part, axis) if axis else part for part, axis in zip(parts, flips, strict=True)],
                       axis=0)

    def _scaler(self, image: np.ndarray, scaling: Scaling | None = None) -> Scaling:
        """How ``image`` is scaled: measured on the whole image (its tiles included), or ``scaling`` where the
        image is a block of a slide (the slide's, measured once)."""
        return scaling or measure_scaling(image, self.model.normalization)

    def predict(self, image: np.ndarray, scaling: Scaling | None = None, origin: tuple[int, int] = (0, 0)
                ) -> np.ndarray:
        """Probabilities for one image (any dtype, grey/RGB/RGBA, as read); large images run as overlapping
        tiles, each scaled a tile at a time with the whole image's intensity range. With ``diameter`` the image
        is resized to the model's training scale and the probabilities back to the image's size. With a
        stained-tissue model, the model `for_image` picks runs. ``scaling``: see `_scaler`; ``origin``: where
        ``image`` starts in what ``scaling`` was measured on (a slide block's window)."""
        if scaling is None and (routed := self.for_image(image)) is not self:
            return routed.predict(image)
        scaling = self._scaler(image, scaling)
        size = image.shape[:2]
        if scaling.maps is not None:  # local maps: the model input at the image's own pixels, before any zoom
            image, scaling = scaling(image, *origin), Scaling(scaling.norm)  # then nothing more to scale
        if self.zoom == 1.0:
            return self._predict(image, scaling)
        return rescale(self._predict(rescale(image, self.zoom), scaling), size=size)

    def _predict(self, image: np.ndarray, scale: Scaling) -> np.ndarray:
        height, width = image.shape[:2]
        padded = pad_to_multiple(image, self.model.pad_multiple)
        if max(padded.shape[:2]) <= self.tile_size:
            return self._run([scale(padded)])[0, :height, :width]
        # Tiles of a large image: give the activation memory back after each run, so post-processing the
        # image does not sit next to an arena sized for a tile.
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        prob = predict_tiled(lambda tile: self._run([scale(tile)], options)[0], padded, self.tile_size, self.overlap)
        return prob[:height, :width]

    def predict_many(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Probabilities for several images; images of the same shape (and model) run as one batch."""
        results: list[np.ndarray] = [np.empty(0)] * len(images)
        groups: dict[tuple[bool, int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault((self.for_image(image) is not self, image.shape[0], image.shape[1]), []).append(index)
        for (stained, height, width), indices in groups.items():
            engine = self.stained_engine if stained else self
            if max(height, width) > engine.tile_size or engine.zoom != 1.0:
                for i in indices:
                    results[i] = engine.predict(images[i])
                continue
            for start in range(0, len(indices), engine.batch_size):
                chunk = indices[start : start + engine.batch_size]
                pad = engine.model.pad_multiple
                # scaled, then padded (as `predict` does): a mirror of the scaled pixels, whatever the kind
                batch = [pad_to_multiple(engine._scaler(images[i])(images[i]), pad) for i in chunk]
                for i, prob in zip(chunk, engine._run(batch), strict=True):
                    results[i] = prob[:height, :width]
        return results
