"""Fitting a U-Net on labelled samples: targets, batches, loss, metrics, callbacks. Imports Keras."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import keras
import numpy as np
from keras import ops
from tqdm import tqdm

from nuclei.config import TrainConfig
from nuclei.core.normalize import normalized
from nuclei.core.targets import contact_zone, core_targets
from nuclei.core.tiling import pad_to_multiple
from nuclei.io.datasets import Sample
from nuclei.training.augment import augmented_crop, random_zoom
from nuclei.training.microscope import MARGIN, joined, microscope, nucleus_diameter, raw_window
from nuclei.training.progress import Epochs

log = logging.getLogger(__name__)

# Told after every epoch, with the stage's epochs so far.
OnEpoch = Callable[[Epochs], None]


def make_targets(labels: np.ndarray, channels: list[str], contact_weight: float = 0.0) -> np.ndarray:
    """Per-pixel training targets (H, W, C + 1) float32: the 0/1 nucleus mask, nucleus cores if asked for, and
    last the loss weight of each pixel: 1, plus `contact_weight` where two nuclei touch or nearly do."""
    planes = [labels > 0]
    if "core" in channels:
        planes.append(core_targets(labels))
    weight = 1.0 + contact_weight * contact_zone(labels) if contact_weight else np.ones(labels.shape)
    return np.stack([*planes, weight], axis=-1).astype(np.float32)


def sampling_weights(
    samples: list[Sample], by_category: bool, dataset_weights: dict[str, float] | None = None
) -> np.ndarray:
    """Sampling probabilities so that no data set or image type drowns the others.

    Each data set gets a share ~ the fourth root of its images (457, 103 and 25 images get 46%, 32% and 22%
    of the crops: the small sets with the unusual images are seen often, the large one still most). Within a
    set, with ``by_category``, each image ~ 1/sqrt(images of its type): rare types (bright colour tissue among
    dark fluorescence) are seen more often, yet the common ones are not drowned either. With one data set and
    no categories every image is equally likely (1/sqrt(n) / sqrt(n) = 1/n). ``dataset_weights`` multiplies a
    set's share (before the shares are normalised), for a fine-tuning stage that favours one set.
    """
    factors = dataset_weights or {}
    datasets = Counter(s.dataset for s in samples)
    categories = Counter((s.dataset, s.category if by_category else "") for s in samples)
    # Within a data set, image i of type c weighs 1/sqrt(n_c); those weights sum to sum_c sqrt(n_c).
    within_total: dict[str, float] = {}
    for (dataset, _), count in categories.items():
        within_total[dataset] = within_total.get(dataset, 0.0) + math.sqrt(count)
    weights = []
    for s in samples:
        kind = (s.dataset, s.category if by_category else "")
        within = 1.0 / math.sqrt(categories[kind]) / within_total[s.dataset]
        weights.append(datasets[s.dataset] ** 0.25 * factors.get(s.dataset, 1.0) * within)
    array = np.array(weights)
    return array / array.sum()


class CropBatches(keras.utils.PyDataset):
    """Batches of random (augmented) crops; validation uses fixed seeded crops so val_loss is comparable."""

    def __init__(
        self, samples: list[Sample], config: TrainConfig, train: bool, steps: int | None = None
    ) -> None:
        super().__init__()
        self.images = [normalized(s.raw, config.normalization) for s in samples]
        self.targets = [make_targets(s.labels, config.channels, config.contact_weight) for s in samples]
        self.labels = [s.labels for s in samples]
        self.raws = [s.raw for s in samples]  # the microscope's changes act on raw pixels, before normalising
        self.diameters = [nucleus_diameter(s.labels) for s in samples]
        # Fields a window may be joined to (`field_joins`): others of its data set, recorded in the same units.
        self.partners = [[j for j, t in enumerate(samples) if j != i and t.dataset == s.dataset
                          and t.raw.dtype == s.raw.dtype and t.raw.ndim == s.raw.ndim] if config.field_joins else []
                         for i, s in enumerate(samples)]
        self.config, self.train = config, train
        self.steps = steps or max(1, math.ceil(len(samples) / config.batch_size))
        self.rng = np.random.default_rng(config.seed + (0 if train else 1))
        # Validation: fixed crops at each validation zoom, and as many again with a microscope's faults where
        # training adds them, so early stopping weighs what the faults are there for.
        self._fixed = None if train else [
            *(self._example(i, zoom) for zoom in config.validation_zooms for i in range(len(samples))),
            *(self._example(i, 1.0, faults=True) for i in range(len(samples) if config.microscope else 0))]
        self.weights = sampling_weights(samples, config.balance_categories, config.dataset_weights) if train else None

    def __len__(self) -> int:
        return self.steps if self._fixed is None else max(1, math.ceil(len(self._fixed) / self.config.batch_size))

    def _example(self, index: int, zoom: float | None = None, faults: bool = False) -> tuple[np.ndarray, np.ndarray]:
        config = self.config
        image, target, labels = self.images[index], self.targets[index], self.labels[index]
        if faults or (self.train and config.augment and self.rng.random() < config.microscope):
            # Glow, saturation, specks, seams and defocus on a raw window a little larger than the crop,
            # normalised as inference would normalise it.
            zoom = zoom or random_zoom(config.scale_range, self.rng)
            side = math.ceil(config.crop_size / zoom) + 2 * MARGIN
            raw, target, labels = self._raw_window(index, side)
            image = normalized(microscope(raw, labels, self.rng, self.diameters[index]), config.normalization)
        return augmented_crop(
            image, target, self.config.crop_size, self.rng,
            augment=self.train and self.config.augment, scale_range=self.config.scale_range,
            labels=labels, nucleus_brightness=self.config.nucleus_brightness,
            stain_jitter=self.config.stain_jitter, zoom=zoom,
        )

    def _raw_window(self, index: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A random raw window of an image with its targets and labels; `field_joins` of them joined along a line
        to a window of another field (a stitched mosaic's seam), their targets made again from the joined
        labels so the nuclei the seam cuts are learnt as those an image's edge cuts."""
        raw, target, labels = raw_window(self.raws[index], self.targets[index], self.labels[index], side, self.rng)
        if self.partners[index] and self.rng.random() < self.config.field_joins:
            other = int(self.rng.choice(self.partners[index]))
            other_raw, _, other_labels = raw_window(self.raws[other], self.targets[other], self.labels[other],
                                                    side, self.rng)
            raw, labels = joined(raw, labels, other_raw, other_labels, self.rng)
            target = make_targets(labels, self.config.channels, self.config.contact_weight)
        return raw, target, labels

    def __getitem__(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        size = self.config.batch_size
        if self._fixed is not None:
            pairs = self._fixed[batch * size : (batch + 1) * size]
        else:
            picks = self.rng.choice(len(self.images), size, p=self.weights)
            pairs = [self._example(int(i)) for i in picks]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _soft_dice(y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
    inter = ops.sum(y_true * y_pred, axis=(0, 1, 2))
    total = ops.sum(y_true + y_pred, axis=(0, 1, 2))
    return 1.0 - ops.mean((2.0 * inter + 1.0) / (total + 1.0))


def segmentation_loss(y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
    """Pixel-weighted binary cross-entropy plus soft Dice. y_true holds the targets, then the weights
    (`make_targets`). Dice keeps the rare nucleus pixels from being drowned out; the weights make the seams
    between touching nuclei count, which is what keeps them apart."""
    channels = y_pred.shape[-1]
    target, weight = y_true[..., :channels], y_true[..., channels]
    bce = ops.mean(weight * keras.losses.binary_crossentropy(target, y_pred))
    return bce + _soft_dice(target, y_pred)


def _foreground(y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> tuple[keras.KerasTensor, ...]:
    truth = ops.cast(y_true[..., 0] > 0.5, "float32")
    pred = ops.cast(y_pred[..., 0] > 0.5, "float32")
    return truth, pred


def pixel_accuracy(y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
    """Share of pixels whose nucleus/background call is right (what the seed project reported)."""
    truth, pred = _foreground(y_true, y_pred)
    return ops.mean(ops.cast(ops.equal(truth, pred), "float32"))


def foreground_iou(y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
    truth, pred = _foreground(y_true, y_pred)
    inter, union = ops.sum(truth * pred), ops.sum(ops.maximum(truth, pred))
    return (inter + 1e-6) / (union + 1e-6)


def dice(y_true: keras.KerasTensor, y_pred: keras.KerasTensor) -> keras.KerasTensor:
    truth, pred = _foreground(y_true, y_pred)
    return (2 * ops.sum(truth * pred) + 1e-6) / (ops.sum(truth) + ops.sum(pred) + 1e-6)


class TimeBudget(keras.callbacks.Callback):
    """Stops fitting once the next epoch would end past the budget (epochs are timed as they run)."""

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.seconds = 60.0 * minutes
        self.started = self.epoch_started = 0.0
        self.longest = 0.0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        now = time.monotonic()
        self.longest = max(self.longest, now - self.epoch_started)
        if now - self.started + self.longest > self.seconds:
            log.info("time budget of %.1f min reached after %d epochs", self.seconds / 60, epoch + 1)
            self.model.stop_training = True


class FittingProgress(keras.callbacks.Callback):
    """Each epoch's figures as every shell shows them (`nuclei.training.progress.Epochs`): a bar on stderr (the
    epoch, its validation loss, the best so far) unless ``bar`` is False, a log line (Prefect's logs, `-v`), and
    ``on_epoch`` (the napari plugin, a Prefect artifact) with the epochs so far."""

    def __init__(self, config: TrainConfig, bar: bool = True, on_epoch: OnEpoch | None = None) -> None:
        super().__init__()
        self.epochs = Epochs(total=config.epochs, budget_s=60.0 * config.minutes if config.minutes else None)
        self.name, self.show_bar, self.on_epoch = config.name, bar, on_epoch
        self.bar: tqdm | None = None
        self.started = 0.0

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.started = time.monotonic()
        total = None if self.epochs.budget_s else self.epochs.total  # a budget ends fitting first: no total
        self.bar = tqdm(total=total, unit="epoch", desc=f"fitting {self.name}", disable=not self.show_bar,
                        dynamic_ncols=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        figures = {k: float(v) for k, v in (logs or {}).items()}
        self.epochs.add({"epoch": float(epoch + 1), **figures, "seconds": time.monotonic() - self.started})
        if self.bar is not None:
            self.bar.set_postfix_str(self.epochs.line(epoch=False), refresh=False)
            self.bar.update(1)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in sorted(figures.items()) if k != "learning_rate")
        log.info("%s epoch %d: %s", self.name, epoch + 1, shown)
        if self.on_epoch is not None:
            self.on_epoch(self.epochs)

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss=segmentation_loss,
        metrics=[pixel_accuracy, foreground_iou, dice],
    )


def fit(
    model: keras.Model, train: list[Sample], val: list[Sample], config: TrainConfig, model_dir: Path,
    callbacks: Sequence[keras.callbacks.Callback] = (), bar: bool = True, on_epoch: OnEpoch | None = None,
) -> dict[str, list[float]]:
    """Train with early stopping on val_loss (best weights restored), a checkpoint and a CSV history;
    ``callbacks`` are the caller's (a stop request); the progress is `FittingProgress`'s (Keras prints
    nothing)."""
    keras.utils.set_random_seed(config.seed)
    compile_model(model, config)
    every = [
        keras.callbacks.EarlyStopping("val_loss", patience=config.patience, restore_best_weights=True),
        keras.callbacks.ModelCheckpoint(model_dir / "checkpoint.keras", "val_loss", save_best_only=True),
        keras.callbacks.CSVLogger(str(model_dir / "history.csv")),
        keras.callbacks.ReduceLROnPlateau("val_loss", factor=0.5, patience=max(2, config.patience // 2)),
        progress := FittingProgress(config, bar, on_epoch),
        *([TimeBudget(config.minutes)] if config.minutes else []),
        *callbacks,
    ]
    try:
        history = model.fit(
            CropBatches(train, config, train=True, steps=config.steps_per_epoch),
            validation_data=CropBatches(val, config, train=False),
            epochs=config.epochs,
            callbacks=every,
            verbose=0,
        )
    finally:  # a stop raised from a callback skips on_train_end: the bar ends before the shell's last line
        progress.on_train_end()
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def predict_keras(model: keras.Model, image: np.ndarray, multiple: int) -> np.ndarray:
    """Keras reference prediction of one image, padded like the ONNX engine pads (for parity checks)."""
    height, width = image.shape[:2]
    prob = model(pad_to_multiple(image, multiple)[None], training=False)
    return np.asarray(prob)[0, :height, :width]
