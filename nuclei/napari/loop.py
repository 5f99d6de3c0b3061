"""The lab's loop without Qt: segment an image, keep a corrected pair, fine-tune, rank what to label next.

The widgets (`nuclei.napari.widgets`) run these in napari's worker threads; nothing here imports napari or Qt,
so each step is testable and usable from a notebook::

    found = segment_image(raw, model_choices()["nuclei-generalist"])
    keep_pair("corrected/", "field-1", raw, edited_labels)            # -> pairs the folder holds
    result = run_finetune("corrected/", "lab-unet", "models", minutes=10, stop=event, progress=report)
"""

from __future__ import annotations

import io
import multiprocessing
import os
import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import cv2
import numpy as np
import tifffile

from nuclei.config import FinetuneConfig
from nuclei.core.measure import COLUMN_NAMES, measure
from nuclei.errors import InputError, Interrupted, NucleiError
from nuclei.inference.engine import Engine
from nuclei.inference.sizing import label_image
from nuclei.inference.suggest import Candidate, Source, rank
from nuclei.io.images import IMAGE_SUFFIXES
from nuclei.modeldir import DEFAULT_MODEL_NAME, SHIPPED_MODELS, is_model_dir, load_model_dir, resolve_stained_model
from nuclei.store.durable import fsync_path
from nuclei.training.progress import Epochs

if TYPE_CHECKING:
    from nuclei.training.finetune import Progress

AUTO_BASE = "auto (by the images)"  # fine-tune from the shipped model `nuclei finetune` picks for the images


# -- models --------------------------------------------------------------------------------------------------

def model_choices(folder: str | Path | None = None, extra: list[Path] | None = None) -> dict[str, Path]:
    """Models to segment with, by name: the shipped ones (the default first), those in ``folder`` (or
    ``folder`` itself when it is a model directory), then ``extra`` (fine-tuned in this session)."""
    found: dict[str, Path] = {}
    shipped = sorted(SHIPPED_MODELS.iterdir(), key=lambda p: (p.name != DEFAULT_MODEL_NAME, p.name)) \
        if SHIPPED_MODELS.is_dir() else []
    for path in shipped:
        if (path / "model.onnx").is_file():
            found[path.name] = path
    for path in [*_models_in(folder), *(extra or [])]:
        name = path.name if path.name not in found or found[path.name] == path else str(path)
        found[name] = path
    return found


def _models_in(folder: str | Path | None) -> list[Path]:
    if not folder or not Path(folder).is_dir():
        return []
    folder = Path(folder)
    if is_model_dir(folder):
        return [folder]
    return [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and is_model_dir(p)]


def engine_for(model: str | Path, stained: str = "default", diameter: float | str | None = None,
               threads: int = 0, drop_debris: bool = True) -> Engine:
    """The engine `nuclei segment --model MODEL --stained-model STAINED --diameter D` would run (``drop_debris``
    False: with `--no-drop-debris`): with the shipped default model and ``stained`` "default", colour brightfield
    images go to the stained-tissue model."""
    model = Path(model)
    shipped_default = model.resolve() == (SHIPPED_MODELS / DEFAULT_MODEL_NAME).resolve()
    chosen = resolve_stained_model(stained, None if shipped_default else str(model))
    size: Any = diameter if diameter in (None, "auto") else float(diameter)  # type: ignore[arg-type]
    return Engine(load_model_dir(model), providers=("CPUExecutionProvider",), threads=threads, diameter=size,
                  stained=chosen, drop_debris=drop_debris)


# -- segment -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Segmented:
    """One image's nuclei: instance labels, their measurements (`COLUMN_NAMES`) and what made them."""

    labels: np.ndarray
    columns: tuple[str, ...]
    table: np.ndarray
    model: str  # name@hash of the model that ran (the stained-tissue one for such an image)
    diameter: float | None = None  # the measured one with diameter "auto", if it rescaled

    @property
    def n_nuclei(self) -> int:
        return int(self.table.shape[0])


def segment_image(raw: np.ndarray, model: str | Path, stained: str = "default",
                  diameter: float | str | None = None, drop_debris: bool = True) -> Segmented:
    """What `nuclei segment` computes for one image (labels as the worker makes them, then `measure`), for an
    array already in memory (a napari layer)."""
    engine = engine_for(model, stained, diameter, drop_debris=drop_debris)
    labels, used = label_image(engine, raw)
    table = measure(labels, raw)
    measured = used.diameter if engine.diameter == "auto" and used.diameter != "auto" else None
    return Segmented(labels, COLUMN_NAMES, table, used.model.version, measured)  # type: ignore[arg-type]


def layer_pixels(data: Any, rgb: bool = False) -> np.ndarray:
    """An image layer's pixels as a file holds them, (H, W) or (H, W, C): the full-resolution level of a
    pyramid; a 2D plane only (a stack's first plane is not guessed)."""
    array = np.asarray(data[0] if isinstance(data, list | tuple) else data)
    expected = 3 if rgb else 2
    if array.ndim != expected:
        raise InputError("layer", f"image layer has {array.ndim} dimensions ({array.shape}); the loop takes 2D "
                         "images (grey, or RGB as one layer)")
    return array


# -- correct and keep ------------------------------------------------------------------------------------------

def safe_stem(name: str) -> str:
    """A layer name as a file stem: letters, digits, '-', '_' and '.', no leading dot."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "image"


def keep_pair(folder: str | Path, name: str, raw: np.ndarray, labels: np.ndarray) -> int:
    """Write ``raw`` and its instance ``labels`` as FOLDER/images/NAME.* and FOLDER/labels/NAME.* (the layout
    `nuclei finetune` reads), replacing a pair of that name; returns how many pairs the folder holds.

    Each file is written under a hidden temporary name (which the dataset reader skips), fsynced, then renamed:
    a reader sees the old pair or the new one, never half a file."""
    folder, stem = Path(folder), safe_stem(name)
    if labels.shape[:2] != raw.shape[:2]:
        raise InputError(stem, f"image is {raw.shape[0]}x{raw.shape[1]} but its labels are "
                         f"{labels.shape[0]}x{labels.shape[1]}")
    image_name, image_blob = _encoded(stem, raw)
    label_name, label_blob = _encoded(stem, label_ids(labels))
    _write_replacing(folder / "images", image_name, image_blob)
    _write_replacing(folder / "labels", label_name, label_blob)
    return count_pairs(folder)


def label_ids(labels: np.ndarray) -> np.ndarray:
    """A Labels layer's data as the uint16 (or uint32, past 65535 ids) instance ids a label file holds."""
    values = np.asarray(labels)
    if values.size and values.min() < 0:
        raise InputError("labels", "negative label values; labels are 0 (background) and nucleus ids")
    top = int(values.max()) if values.size else 0
    return values.astype(np.uint16 if top < 2**16 else np.uint32)


def _encoded(stem: str, array: np.ndarray) -> tuple[str, bytes]:
    """PNG for 8- and 16-bit grey or RGB(A) pixels (what the samples and `query export` use), TIFF for the rest
    (float, 32-bit), so the pixels are kept exactly."""
    pixels = np.ascontiguousarray(array)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if pixels.dtype in (np.uint8, np.uint16) and channels in (1, 3, 4):
        if channels >= 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA if channels == 4 else cv2.COLOR_RGB2BGR)
        ok, encoded = cv2.imencode(".png", pixels)
        if not ok:
            raise InputError(stem, "could not encode as PNG")
        return f"{stem}.png", encoded.tobytes()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, photometric="rgb" if channels in (3, 4) else "minisblack")
    return f"{stem}.tif", buffer.getvalue()


def _write_replacing(folder: Path, name: str, blob: bytes) -> None:
    """FOLDER/NAME atomically; a file of the same stem with another suffix goes (one file per stem)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    for other in folder.iterdir():
        if other.stem == final.stem and other != final and other.suffix.lower() in IMAGE_SUFFIXES:
            other.unlink()
    fsync_path(str(folder))


def count_pairs(folder: str | Path) -> int:
    """Images in FOLDER/images with a label file of the same stem in FOLDER/labels."""
    images, labels = (_stems(Path(folder) / part) for part in ("images", "labels"))
    return len(images & labels)


def _stems(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


# -- fine-tune -----------------------------------------------------------------------------------------------------

def base_choices() -> dict[str, str | None]:
    """What a fine-tune may start from: as `nuclei finetune` decides by the images, or a shipped model."""
    return {AUTO_BASE: None, **{name: name for name in model_choices()}}


@dataclass(frozen=True)
class Tuned:
    """A published fine-tuned model: where it is, what it started from, how long it took (the comparison is
    in MODEL_DIR/finetune/, `comparison_text`)."""

    model_dir: Path
    base: Path
    seconds: float


def run_finetune(folder: str | Path, name: str, out: str | Path, minutes: float, base: str | None = None,
                 stop: threading.Event | None = None, progress: Progress | None = None,
                 recipe: dict[str, Any] | None = None) -> Tuned:
    """`nuclei finetune FOLDER --name NAME --out OUT --minutes M [--base B]` as a library call, in a process of its
    own: TensorFlow cannot be imported into a process that already shows napari's OpenGL canvas (the import
    segfaults, TensorFlow 2.21 with PyQt5 5.15), and its few GB of memory go when the process does.

    ``progress`` gets the fine-tune's stages and epochs (`nuclei.training.finetune.Progress`); ``stop`` is passed
    on (the fine-tune stops after the batch in hand and publishes nothing: Interrupted here). ``recipe``: changes
    to `FINETUNE_CHANGES` (tests and benchmarks shorten the run with it)."""
    context = multiprocessing.get_context("spawn")  # a fork would copy the Qt threads' state into the child
    messages = context.Queue()
    stopping = context.Event()
    child = context.Process(target=_finetune_apart, daemon=True, name=f"nuclei finetune {name}",
                            args=(messages, stopping, str(folder), name, str(out), minutes, base, recipe or {}))
    child.start()
    try:
        while True:
            if stop is not None and stop.is_set():
                stopping.set()
            try:
                kind, payload = messages.get(timeout=0.2)
            except queue.Empty:
                if not child.is_alive():
                    raise NucleiError(f"the fine-tune process ended (exit code {child.exitcode}) with no result") \
                        from None
                continue
            if kind == "progress" and progress is not None:
                progress(*payload)
            elif kind == "done":
                return Tuned(**payload)
            elif kind == "interrupted":
                raise Interrupted(payload)
            elif kind == "error":
                raise NucleiError(payload)
    finally:
        child.join(timeout=60)


def _finetune_apart(messages: Any, stop: Any, folder: str, name: str, out: str, minutes: float, base: str | None,
                    recipe: dict[str, Any]) -> None:
    """The fine-tune process: `finetune` with its progress, result or failure sent back through ``messages``."""
    from nuclei.training.startup import start_tensorflow

    start_tensorflow()  # its start-up lines stay off the terminal napari was started from
    from nuclei.training import finetune

    finetune.FINETUNE_CHANGES.update(recipe)
    try:  # the progress shows in the widget: no bar on the terminal
        result = finetune.finetune(FinetuneConfig(data_dir=str(folder), name=name, out_dir=str(out),
                                                  minutes=minutes, base=base), stop=stop, bar=False,
                                   progress=lambda stage, figures: messages.put(("progress", (stage, figures))))
    except Interrupted as exc:
        messages.put(("interrupted", str(exc)))
    except Exception as exc:  # noqa: BLE001 - any failure is the caller's to show, as one line
        messages.put(("error", " ".join(str(exc).split()) or type(exc).__name__))
    else:  # plain values: unpickling the result's own classes would import TensorFlow here
        messages.put(("done", {"model_dir": result.model_dir, "base": result.base, "seconds": result.seconds}))


def comparison_text(model_dir: Path) -> str:
    """The fine-tune's comparison as its comparison.md says it (the table and the verdict), or why there is
    none (no image was held back)."""
    found = model_dir / "finetune" / "comparison.md"
    if not found.is_file():
        return f"{model_dir.name}: no comparison (too few images to hold any back; label at least 3)"
    return found.read_text()


@dataclass
class Fitting:
    """What the fine-tune has said so far: the stage and the epochs (`Epochs`: the terminal's bar and the Prefect
    artifact read the same), for the progress line and bar."""

    minutes: float
    stage: str = "loading"
    epochs: Epochs = field(default_factory=Epochs)

    # How far the fine-tune is when each stage begins; fitting moves from its start to "exporting" by time.
    SHARES: ClassVar[dict[str, float]] = {"loading": 0.02, "fitting": 0.02, "exporting": 0.75, "comparing": 0.9,
                                          "publishing": 0.98}

    def update(self, stage: str, figures: dict[str, float]) -> None:
        self.stage = stage
        self.epochs.take(figures)

    def line(self) -> str:
        """'fitting: epoch 12: val loss 0.4123, best 0.4100 (epoch 10)', or the stage."""
        if self.stage != "fitting" or not self.epochs.figures:
            return f"{self.stage}..."
        return f"fitting: {self.epochs.line()}"

    def fraction(self) -> float:
        start = self.SHARES.get(self.stage, 0.0)
        if self.stage != "fitting":
            return start
        return start + (self.SHARES["exporting"] - start) * self.epochs.fraction()


# -- what to label next ----------------------------------------------------------------------------------------

def suggest(images: list[Source], model: str | Path, stained: str = "default",
            stop: threading.Event | None = None, on_image: Callable[[int, int], None] | None = None
            ) -> list[Candidate]:
    """``images`` (`images_of` a folder or store) the least sure first (`nuclei.inference.suggest`);
    ``on_image(i, n)`` after each, ``stop`` looked at between images (Interrupted)."""
    engine = engine_for(model, stained)

    def each(done: int) -> None:
        if stop is not None and stop.is_set():
            raise Interrupted("stopped on request")
        if on_image is not None:
            on_image(done, len(images))

    return rank(engine, images, each)


def shown_candidates(candidates: list[Candidate], n: int) -> Iterator[str]:
    """One line per candidate: rank, id, flip disagreement, confidence."""
    for i, c in enumerate(candidates[:n] if n > 0 else candidates, start=1):
        shown = c.id if len(c.id) <= 28 else f"{c.id[:24]}..."  # hashes of DSB2018 ids: enough to tell apart
        yield f"{i:>2}. {shown}  disagreement {c.flip_disagreement:.3f}  confidence {c.confidence:.3f}"
