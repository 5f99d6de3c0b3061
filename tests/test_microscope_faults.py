"""What a microscope does to a field does not change its nuclei (issue 35), with the shipped default model on
real BBBC039 fields from wells it never trained on (vendored under tests/data, CC0):

- a smooth glow (the background rising 3x across the field) and three nuclei pushed to saturation;
- a 3 x 3 mosaic of fields whose brightness differs 4x, segmented as a slide (blocks, the `local` maps of the
  whole slide): each field scores as it does alone;
- small bright specks of debris (3-8 px) on the background add no nuclei but where the image's edge cuts one
  (the debris rule, `nuclei.core.debris`) and leave the field's nuclei as they were; `--no-drop-debris` keeps
  them, `--min-diameter` drops them too.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import tifffile

import nuclei
from nuclei.core.metrics import average_precision, matching
from nuclei.io.images import read_labels, read_raw

from .conftest import REPO, SAMPLES

FIELDS = sorted((REPO / "tests" / "data" / "bbbc039" / "images").glob("*.png"))
OWN = SAMPLES / "images" / "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.png"
CAMERA_TOP = 4095  # the 12-bit camera these 16-bit files come from


@cache
def _engine():  # type: ignore[no-untyped-def]
    from nuclei.inference.engine import Engine
    from nuclei.modeldir import default_model_path, load_model_dir

    return Engine(load_model_dir(default_model_path()), providers=("CPUExecutionProvider",))


def _segment(image: np.ndarray, drop_debris: bool = True) -> np.ndarray:
    """The image's nuclei as `nuclei segment` labels them."""
    from dataclasses import replace

    from nuclei.inference.sizing import nuclei_of

    engine = replace(_engine(), drop_debris=drop_debris)
    return nuclei_of(engine, image, engine.predict(image))


def _found_again(reference: np.ndarray, other: np.ndarray) -> float:
    return matching(reference, other, 0.5).tp / max(1, int(reference.max()))


def _background(field: np.ndarray, labels: np.ndarray) -> float:
    return float(np.median(field[labels == 0]))


@pytest.mark.parametrize("path", [OWN, *FIELDS], ids=lambda p: p.name[8:14])
def test_a_glowing_uneven_background_and_saturated_cells_keep_the_fields_nuclei(path: Path) -> None:
    field, labels = read_raw(str(path)), read_labels(str(path.parent.parent / "labels" / path.name))
    own = _segment(field)
    background = _background(field, labels)
    height, width = field.shape
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (xx / width + yy / height) / 2  # 0 at one corner, 1 at the other
    glow = 3.0 * background * ramp + 1.5 * background * np.exp(-((yy - height / 3) ** 2 + (xx - width / 2) ** 2)
                                                              / (2 * (width / 4) ** 2))
    changed = field.astype(np.float64) + glow  # the background rises about 3x across the field
    ids = np.unique(labels[labels > 0])
    bright = ids[np.argsort([field[labels == i].mean() for i in ids])[-3:]]  # the three brightest nuclei
    for i in bright:
        inside = labels == i
        changed[inside] = background + (changed[inside] - background) * 8
    changed = np.clip(changed, 0, CAMERA_TOP).astype(np.uint16)
    assert np.count_nonzero(changed == CAMERA_TOP) > 300  # saturated, flat
    rises = np.median(changed[(labels == 0) & (ramp > 0.9)]) / np.median(changed[(labels == 0) & (ramp < 0.1)])
    assert rises > 2.0
    assert _found_again(own, _segment(changed)) >= 0.95


def _specked(field: np.ndarray, labels: np.ndarray, own: np.ndarray) -> np.ndarray:
    """40 bright discs of 3-8 px on the field's background, 12 px or more from any nucleus."""
    from scipy import ndimage as ndi

    contrast = float(np.median(field[labels > 0])) - _background(field, labels)
    rng = np.random.default_rng(7)
    free = ~ndi.binary_dilation(own > 0, iterations=12)
    specked = field.astype(np.float64)
    ys, xs = np.nonzero(free)
    picks = rng.choice(ys.size, 40, replace=False)
    yy, xx = np.mgrid[0 : field.shape[0], 0 : field.shape[1]]
    for y, x in zip(ys[picks], xs[picks], strict=True):
        radius = rng.uniform(1.5, 4.0)  # 3-8 px across
        specked[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] += contrast * rng.uniform(1.0, 3.0)
    return np.clip(specked, 0, CAMERA_TOP).astype(np.uint16)


@pytest.mark.parametrize("path", [OWN, *FIELDS], ids=lambda p: p.name[8:14])
def test_debris_specks_on_the_background_add_no_nuclei(path: Path) -> None:
    field, labels = read_raw(str(path)), read_labels(str(path.parent.parent / "labels" / path.name))
    own = _segment(field)
    specked = _specked(field, labels, own)
    kept = matching(own, _segment(specked, drop_debris=False), 0.5)
    added = matching(own, _segment(specked), 0.5)
    assert kept.fp >= 5, "the network takes specks for nuclei: what the rule is for"
    # None but those the image's edge cuts (kept: a nucleus the edge cuts is small and real) or that land a fifth
    # of a nucleus from one (as micronuclei do): 1-2 of 40 here, 1.2 over 18 held-out fields (BENCHMARKS 8a)
    assert added.fp <= 2, f"{added.fp} specks became nuclei"  # of 40
    assert added.tp >= 0.97 * own.max()


def test_debris_is_dropped_through_a_real_run_and_kept_on_request(tmp_path: Path) -> None:
    """A real run drops the specks by default; `drop_debris=False` (`--no-drop-debris`) keeps them and
    `min_diameter` drops them by size; each setting reaches the engine and the entry's key (a re-run with another
    one segments again)."""
    field, labels = read_raw(str(OWN)), read_labels(str(OWN.parent.parent / "labels" / OWN.name))
    own = _segment(field)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "specked.tif", _specked(field, labels, own))
    store = tmp_path / "s.zarr"

    def run(**settings: object) -> np.ndarray:
        assert nuclei.segment([str(tmp_path / "in")], store=store, **settings)["done"] == 1, "a stale entry"
        return nuclei.open_store(store).labels("specked")

    kept, dropped = matching(own, run(drop_debris=False), 0.5), matching(own, run(), 0.5)
    assert kept.fp >= 5, "the specks should show with debris kept"
    assert dropped.fp <= 2, f"{dropped.fp} specks left of {kept.fp}"
    by_size = matching(own, run(drop_debris=False, min_diameter=10), 0.5)
    assert nuclei.open_store(store).metadata("specked")["thresholds"]["min_size"] == 79  # ceil(pi / 4 * 10^2)
    assert by_size.fp <= 2, f"{by_size.fp} specks left of {kept.fp}"
    assert min(dropped.tp, by_size.tp) >= 0.97 * own.max()


def _mosaic_fields() -> list[tuple[np.ndarray, np.ndarray]]:
    """Nine 520 x 696 fields: the four vendored ones and their mirror images."""
    fields = []
    for path in [OWN, *FIELDS]:
        raw, labels = read_raw(str(path)), read_labels(str(path.parent.parent / "labels" / path.name))
        fields += [(raw, labels), (raw[::-1], labels[::-1])]
    return [*fields, (fields[0][0][:, ::-1], fields[0][1][:, ::-1])][:9]


def _as_slide(mosaic: np.ndarray, folder: Path) -> np.ndarray:
    """The mosaic written as a tiled OME-TIFF and segmented as a slide (1024 px blocks); its labels."""
    folder.mkdir()
    tifffile.imwrite(folder / "plate.ome.tif", mosaic, tile=(256, 256), compression="zlib", ome=True)
    summary = nuclei.segment([str(folder / "plate.ome.tif")], store=folder / "s.zarr", slide_pixels=1,
                             block_size=1024)
    assert summary["done"] == 1, summary["failures"]
    return nuclei.open_store(folder / "s.zarr").labels("plate.ome")


def test_fields_of_other_brightness_in_one_slide_score_as_they_do_at_one_brightness(tmp_path: Path) -> None:
    """A stitched 3 x 3 mosaic, its fields at 1, 1/2 or 1/4 of their brightness (neighbours differ), segmented as
    a slide: each field scores as in the same mosaic at one brightness (the seams, where nuclei cut by a field's
    edge meet the next field's, cost the same both ways), and on average as the fields alone."""
    fields = _mosaic_fields()
    gains = [1.0, 0.25, 0.5, 0.25, 1.0, 0.5, 0.5, 1.0, 0.25]
    height, width = fields[0][0].shape
    dimmed = [np.rint(raw.astype(np.float64) * gain).astype(np.uint16)
              for (raw, _), gain in zip(fields, gains, strict=True)]

    def mosaic(parts: list[np.ndarray]) -> np.ndarray:
        rows = [np.concatenate(parts[r * 3 : r * 3 + 3], axis=1) for r in range(3)]
        return np.concatenate(rows, axis=0)

    def scores(labels: np.ndarray) -> np.ndarray:
        return np.array([average_precision(truth, labels[r * height : (r + 1) * height, c * width : (c + 1) * width])
                         for (_, truth), (r, c) in zip(fields, [divmod(n, 3) for n in range(9)], strict=True)])

    varied = scores(_as_slide(mosaic(dimmed), tmp_path / "varied"))
    even = scores(_as_slide(mosaic([raw for raw, _ in fields]), tmp_path / "even"))
    alone = np.array([average_precision(truth, _segment(part)) for (_, truth), part in zip(fields, dimmed,
                                                                                               strict=True)])
    # Measured with the shipped model: the fields score 0.019 lower on average than at one brightness (the
    # previous model's single window: 0.045), one field next to fields 4x dimmer by 0.07: where the brightness
    # steps, the 32 px cells' maps blur it over a cell or two (each field normalised alone, then stitched,
    # scores as the even mosaic: BENCHMARKS section 8).
    assert even.mean() - varied.mean() <= 0.03, list(zip(even.round(3), varied.round(3), strict=True))
    assert np.all(even - varied <= 0.09), list(zip(even.round(3), varied.round(3), strict=True))
    assert alone.mean() - varied.mean() <= 0.04, (alone.round(3), varied.round(3))
