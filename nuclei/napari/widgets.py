"""The lab's loop as napari dock widgets: Segment, Correct and keep, Fine-tune, What to label next.

Plugins > nuclei > Lab loop (all four, in tabs), or each alone; they share one list of models per viewer, so a
model fine-tuned here is selectable in Segment at once. Long work runs in napari's worker threads (the viewer
stays responsive) with a progress bar and a cancel button; the work itself is `nuclei.napari.loop`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
    TextEdit,
)
from napari.layers import Image, Labels
from napari.qt.threading import FunctionWorker, create_worker
from psygnal import Signal
from qtpy.QtCore import QObject
from qtpy.QtCore import Signal as QtSignal
from qtpy.QtWidgets import QTabWidget

from nuclei.errors import Interrupted
from nuclei.inference.suggest import images_of
from nuclei.io.images import read_raw
from nuclei.napari import loop
from nuclei.viewer import add_nuclei_layer

if TYPE_CHECKING:
    import napari

    from nuclei.inference.suggest import Candidate


NUCLEI_SUFFIX = " nuclei"  # image layer X, its nuclei 'X nuclei' (as `nuclei view` names a store's layers)


class SharedModels:
    """The models of one viewer's widgets: shipped, a chosen folder's, and those fine-tuned in this session."""

    changed = Signal()

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.tuned: list[Path] = []

    def choices(self) -> dict[str, Path]:
        return loop.model_choices(self.folder, self.tuned)

    def add(self, model_dir: Path) -> None:
        if model_dir not in self.tuned:
            self.tuned.append(model_dir)
        self.changed.emit()

    def look_in(self, folder: Path | None) -> None:
        self.folder = folder
        self.changed.emit()


_SHARED: weakref.WeakKeyDictionary[Any, SharedModels] = weakref.WeakKeyDictionary()


def shared_models(viewer: napari.Viewer) -> SharedModels:
    if viewer not in _SHARED:
        _SHARED[viewer] = SharedModels()
    return _SHARED[viewer]


class _Relay(QObject):
    """Carries a worker thread's progress to the widget in the main thread (a queued Qt signal)."""

    message = QtSignal(str, object)


def _folder_edit(label: str, value: Path | None = None) -> FileEdit:
    return FileEdit(label=label, mode=FileDialogMode.EXISTING_DIRECTORY, value=value)


def _path(edit: FileEdit) -> Path | None:
    """The folder a FileEdit names, or None when it is empty."""
    value = edit.value
    return Path(value) if isinstance(value, str | Path) and str(value) not in ("", ".") else None


def _given(edit: FileEdit, what: str) -> Path:
    found = _path(edit)
    if found is None:
        raise ValueError(f"choose the {what}")
    return found


def _layer_names(viewer: napari.Viewer, kind: type) -> list[str]:
    return [str(getattr(layer, "name", "")) for layer in viewer.layers if isinstance(layer, kind)]


class _Task(Container):
    """A widget that runs one piece of work at a time in a worker thread, with progress, cancel and a status."""

    def __init__(self, viewer: napari.Viewer, widgets: list[Any], run_text: str) -> None:
        self.viewer = viewer
        self.run_button = PushButton(text=run_text)
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False)
        self.status = Label(value="")
        super().__init__(widgets=[*widgets, self.run_button, self.cancel_button, self.progress, self.status])
        self.worker: FunctionWorker | None = None
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.relay = _Relay()
        self.relay.message.connect(self._on_message)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)

    def start(self) -> None:
        if self.worker is not None:
            return
        self.stop = threading.Event()
        self.error = None
        try:
            work = self.prepare()
        except Exception as exc:  # noqa: BLE001 - a bad choice in the form: said in the status line
            self._failed(exc)
            return
        worker = create_worker(work, _start_thread=False, _ignore_errors=True)  # ours to show
        worker.returned.connect(self._returned)
        worker.errored.connect(self._errored)
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.visible, self.progress.value = True, 0
        worker.start()

    def cancel(self) -> None:
        if self.worker is not None:
            self.stop.set()
            self.status.value = "cancelling..."

    def prepare(self) -> Any:
        """Read the form (main thread) and return the work to run in the worker thread."""
        raise NotImplementedError

    def done(self, result: Any) -> None:
        """Show the result (main thread)."""

    def _on_message(self, text: str, fraction: object) -> None:
        self.status.value = text
        if isinstance(fraction, float):
            self.progress.max, self.progress.value = 1000, round(1000 * min(1.0, fraction))

    def report(self, text: str, fraction: float | None = None) -> None:
        """From the worker thread: a status line and, when known, the share done."""
        self.relay.message.emit(text, fraction)

    def _returned(self, result: Any) -> None:
        if self.stop.is_set():
            self.status.value = "cancelled"
            return
        self.done(result)

    def _errored(self, exc: BaseException) -> None:
        if isinstance(exc, Interrupted):
            self.status.value = "cancelled: nothing written"
        else:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.error = exc
        self.status.value = f"error: {' '.join(str(exc).split())}"

    def _finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.progress.visible = False


class SegmentWidget(_Task):
    """The selected image layer segmented by a chosen model: a Labels layer of its nuclei, measured."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.models = shared_models(napari_viewer)
        self.image = ComboBox(label="image", choices=lambda _: _layer_names(napari_viewer, Image))
        self.model = ComboBox(label="model", choices=lambda _: list(self.models.choices()))
        self.folder = _folder_edit("models folder")
        self.stained = ComboBox(label="stained model", choices=["default", "none"], value="default")
        self.diameter = LineEdit(label="diameter (px)", value="")
        self.drop_debris = CheckBox(label="drop debris specks", value=True)
        super().__init__(napari_viewer, [self.image, self.model, self.folder, self.stained, self.diameter,
                                         self.drop_debris], "Segment")
        self.last: loop.Segmented | None = None
        self.native.layout().addStretch(1)  # the form at the top of the dock, not spread over it
        self.folder.changed.connect(lambda _: self.models.look_in(_path(self.folder)))
        self.models.changed.connect(self.model.reset_choices)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _: self.image.reset_choices())
        napari_viewer.layers.selection.events.active.connect(lambda event: self._follow(event.value))
        self._follow(napari_viewer.layers.selection.active)

    def _follow(self, layer: Any) -> None:
        """The image layer selected in the layer list is the one to segment (or the image of a selected
        'X nuclei' layer)."""
        if isinstance(layer, Labels) and layer.name.endswith(NUCLEI_SUFFIX):
            name = layer.name[: -len(NUCLEI_SUFFIX)]
        elif isinstance(layer, Image):
            name = layer.name
        else:
            return
        if name not in self.image.choices:
            self.image.reset_choices()  # selected as it is inserted: before the list of layers has it
        if name in self.image.choices:
            self.image.value = name

    def prepare(self) -> Any:
        if not self.image.value:
            raise ValueError("open an image first (File > Open)")
        layer = self.viewer.layers[self.image.value]
        raw = loop.layer_pixels(layer.data, getattr(layer, "rgb", False))
        model = self.models.choices()[self.model.value]
        diameter = self.diameter.value.strip() or None
        stained, drop_debris = self.stained.value, bool(self.drop_debris.value)
        self.status.value = f"segmenting {layer.name} with {self.model.value}..."
        self.progress.max = 0  # busy: one model run has no steps to count
        return lambda: (layer, loop.segment_image(raw, model, stained, diameter, drop_debris))

    def done(self, result: Any) -> None:
        layer, found = result
        self.last = found
        name = f"{layer.name}{NUCLEI_SUFFIX}"
        common = {"scale": layer.scale, "translate": layer.translate,
                  "metadata": {"nuclei": {"model": found.model, "diameter": found.diameter}}}
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)  # a new segmentation replaces the old one (corrections included)
        add_nuclei_layer(self.viewer, found.labels, name, found.columns, found.table, **common)
        self.status.value = f"{found.n_nuclei} nuclei ({found.model})"


class KeepWidget(Container):
    """Correct with napari's label tools, then one button keeps the image and its labels as a training pair."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.viewer = napari_viewer
        self.image = ComboBox(label="image", choices=lambda _: _layer_names(napari_viewer, Image))
        self.labels_layer = ComboBox(label="labels", choices=lambda _: _layer_names(napari_viewer, Labels))
        self.folder = _folder_edit("labelled folder", Path.home() / "nuclei-labelled")
        self.keep_button = PushButton(text="Keep the pair")
        self.status = Label(value="")
        super().__init__(widgets=[self.image, self.labels_layer, self.folder, self.keep_button, self.status])
        self.native.layout().addStretch(1)
        self.keep_button.changed.connect(self.keep)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(lambda _: self.reset_choices())
        self.labels_layer.changed.connect(self._match_image)

    def _match_image(self, name: str | None) -> None:
        """The labels layer 'X nuclei' goes with the image layer 'X'."""
        if name and name.endswith(NUCLEI_SUFFIX) and name[: -len(NUCLEI_SUFFIX)] in self.image.choices:
            self.image.value = name[: -len(NUCLEI_SUFFIX)]

    def keep(self) -> int | None:
        try:
            image = self.viewer.layers[self.image.value]
            labels = self.viewer.layers[self.labels_layer.value]
            raw = loop.layer_pixels(image.data, image.rgb)
            ids = loop.layer_pixels(labels.data)
            count = loop.keep_pair(_given(self.folder, 'labelled folder'), image.name, raw, ids)
        except Exception as exc:  # noqa: BLE001 - said in the status line
            self.status.value = f"error: {' '.join(str(exc).split())}"
            return None
        self.status.value = f"kept {loop.safe_stem(image.name)}: {self.folder.value} holds {count} pair(s)"
        return count


class FinetuneWidget(_Task):
    """Fine-tune from a labelled folder within a time budget; the comparison shows here, the model in Segment."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.models = shared_models(napari_viewer)
        self.folder = _folder_edit("labelled folder", Path.home() / "nuclei-labelled")
        self.model_name = LineEdit(label="model name", value="lab-unet")
        self.out = _folder_edit("models folder", Path.home() / "nuclei-models")
        self.minutes = FloatSpinBox(label="minutes", value=15.0, min=0.1, max=600.0, step=1.0)
        self.base = ComboBox(label="start from", choices=list(loop.base_choices()), value=loop.AUTO_BASE)
        self.comparison = TextEdit(value="", label="comparison")
        self.comparison.read_only = True
        super().__init__(napari_viewer, [self.folder, self.model_name, self.out, self.minutes, self.base], "Fine-tune")
        self.append(self.comparison)
        self.fitting: loop.Fitting | None = None
        self.result: loop.Tuned | None = None
        self.recipe: dict[str, Any] = {}  # changes to the fine-tune recipe (FINETUNE_CHANGES): tests shorten it

    def prepare(self) -> Any:
        folder, out = _given(self.folder, 'labelled folder'), _given(self.out, 'models folder')
        name = self.model_name.value.strip()
        minutes, base = float(self.minutes.value), loop.base_choices()[self.base.value]
        fitting = self.fitting = loop.Fitting(minutes)
        stop = self.stop
        self.status.value = f"fine-tuning on {loop.count_pairs(folder)} pair(s)..."

        def progress(stage: str, figures: dict[str, float]) -> None:
            fitting.update(stage, figures)
            self.report(fitting.line(), fitting.fraction())

        recipe = dict(self.recipe)
        return lambda: loop.run_finetune(folder, name, out, minutes, base, stop, progress, recipe)

    def done(self, result: Any) -> None:
        self.result = result
        self.comparison.value = loop.comparison_text(result.model_dir)
        picture = result.model_dir / "finetune" / "comparison.png"
        if picture.is_file():
            working = self.viewer.layers.selection.active
            shown = self.viewer.add_image(read_raw(picture), name=f"comparison: {result.model_dir.name}", rgb=True)
            shown.visible = False  # in the layer list to look at; the image being worked on stays in view
            if working is not None:
                self.viewer.layers.selection.active = working  # and stays the one Segment takes
        self.models.add(result.model_dir)
        self.status.value = f"{result.model_dir} ({result.seconds / 60:.1f} min): selectable in Segment"


class SuggestWidget(_Task):
    """What to label next: a folder's or store's images ranked, the model's least sure first; open one."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        self.models = shared_models(napari_viewer)
        self.source = _folder_edit("folder or store")
        self.model = ComboBox(label="model", choices=lambda _: list(self.models.choices()))
        self.n = SpinBox(label="show", value=10, min=0, max=10000)
        self.ranking = TextEdit(value="", label="ranking")
        self.ranking.read_only = True
        self.open_button = PushButton(text="Open the next to label", enabled=False)
        super().__init__(napari_viewer, [self.source, self.model, self.n], "Rank")
        self.extend([self.ranking, self.open_button])
        self.models.changed.connect(self.model.reset_choices)
        self.open_button.changed.connect(self.open_next)
        self.candidates: list[Candidate] = []
        self.readers: dict[str, Callable[[], np.ndarray]] = {}
        self._next = 0

    def prepare(self) -> Any:
        source, model, stop = _given(self.source, "folder or store"), self.models.choices()[self.model.value], self.stop
        images = images_of(source)
        self.readers = {image_id: read for image_id, _, read in images}
        self.status.value = f"ranking {len(images)} images of {source}..."
        return lambda: loop.suggest(images, model, stop=stop,
                                    on_image=lambda i, n: self.report(f"{i} of {n} images", i / n))

    def done(self, result: Any) -> None:
        self.candidates, self._next = result, 0
        self.ranking.value = "\n".join(loop.shown_candidates(result, int(self.n.value)))
        self.open_button.enabled = bool(result)
        self.status.value = f"{len(result)} image(s) ranked, the least sure first"

    def open_next(self) -> None:
        """The next image of the ranking as a layer (a file's, or a store entry's pixels)."""
        if self._next >= len(self.candidates):
            return
        candidate = self.candidates[self._next]
        self._next += 1
        raw = self.readers[candidate.id]()
        self.viewer.add_image(raw, name=loop.safe_stem(candidate.id), rgb=raw.ndim == 3 and raw.shape[2] in (3, 4))


class LabLoopWidget(QTabWidget):
    """The four steps in tabs, in the order a lab goes through them."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.segment = SegmentWidget(napari_viewer)
        self.keep = KeepWidget(napari_viewer)
        self.finetune = FinetuneWidget(napari_viewer)
        self.suggest = SuggestWidget(napari_viewer)
        for title, widget in (("Segment", self.segment), ("Correct and keep", self.keep),
                              ("Fine-tune", self.finetune), ("Label next", self.suggest)):
            self.addTab(widget.native, title)
