"""The `local` normalisation (issue 35) on real BBBC039 fields: glow is removed, saturated cells and brighter
neighbours do not move a field's window, and any part of an image (a tile, a slide block, a slide read a band
at a time) gets exactly the whole image's values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from nuclei.core.background import cell_stats, interpolate
from nuclei.core.normalize import Normalization, luminance, measure_scaling, normalized
from nuclei.io.images import read_labels, read_raw

from .conftest import REPO, SAMPLES

LOCAL = Normalization(kind="local", anchor=2.4)
FOREGROUND = Normalization(kind="foreground")
PATHS = [SAMPLES / "images" / "IXMtest_A02_s1_w1051DAA7C-7042-435F-99F0-1E847D9B42CB.png",
         *sorted((REPO / "tests" / "data" / "bbbc039" / "images").glob("*.png"))]


def _field(path: Path = PATHS[0]) -> tuple[np.ndarray, np.ndarray]:
    return read_raw(str(path)), read_labels(str(path.parent.parent / "labels" / path.name))


def _glowing(field: np.ndarray, labels: np.ndarray, rise: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The field with a smooth glow: its background rises ``rise``-fold from one corner to the other."""
    background = float(np.median(field[labels == 0]))
    yy, xx = np.mgrid[0 : field.shape[0], 0 : field.shape[1]]
    ramp = (yy / field.shape[0] + xx / field.shape[1]) / 2
    return np.clip(field + (rise - 1) * background * ramp, 0, 4095).astype(np.uint16), ramp


def test_a_glow_is_removed_where_the_whole_image_window_keeps_it() -> None:
    field, labels = _field()
    glowing, ramp = _glowing(field, labels)
    dark, lit = (labels == 0) & (ramp < 0.15), (labels == 0) & (ramp > 0.85)

    def rise(norm: Normalization) -> float:
        out = normalized(glowing, norm)[..., 0]
        return float(np.median(out[lit]) - np.median(out[dark]))

    assert rise(LOCAL) < 0.03  # the background the network sees is flat
    assert rise(FOREGROUND) > 0.15  # one window for the image: the glow passes through
    nuclei = normalized(glowing, LOCAL)[..., 0][labels > 0]
    assert 0.25 < np.median(nuclei) < 0.7  # and the nuclei sit where training put them


def test_saturated_cells_do_not_move_the_window_of_the_others() -> None:
    field, labels = _field()
    background = float(np.median(field[labels == 0]))
    ids = np.unique(labels[labels > 0])
    bright = ids[np.argsort([field[labels == i].mean() for i in ids])[-3:]]
    saturated = field.astype(np.float64)
    for i in bright:
        saturated[labels == i] = background + (saturated[labels == i] - background) * 10
    saturated = np.clip(saturated, 0, 4095).astype(np.uint16)
    others = (labels > 0) & ~np.isin(labels, bright)
    before = normalized(field, LOCAL)[..., 0][others]
    after = normalized(saturated, LOCAL)[..., 0][others]
    assert np.median(after) == pytest.approx(np.median(before), rel=0.15)


def test_a_field_beside_fields_4x_brighter_keeps_its_window() -> None:
    """Three fields side by side, the middle one at a quarter of the brightness: away from the seams, each
    field's scale is its own (alone, at its gain)."""
    fields = [_field(p) for p in PATHS[:3]]
    gains = [1.0, 0.25, 1.0]
    parts = [np.rint(f.astype(np.float64) * g).astype(np.uint16) for (f, _), g in zip(fields, gains, strict=True)]
    row = np.concatenate(parts, axis=1)
    together = measure_scaling(row, LOCAL)
    height, width = parts[0].shape
    for n, part in enumerate(parts):
        alone = measure_scaling(part, LOCAL)
        assert together.maps is not None and alone.maps is not None
        inner = slice(96, width - 96)
        mine = interpolate(together.maps.scale, 32, 0, n * width, height, width)[:, inner]
        own = interpolate(alone.maps.scale, 32, 0, 0, height, width)[:, inner]
        nuclei = fields[n][1][:, inner] > 0
        assert np.median(mine[nuclei] / own[nuclei]) == pytest.approx(1.0, abs=0.1), n


def test_any_part_gets_exactly_the_whole_images_values() -> None:
    field, _ = _field()
    scaling = measure_scaling(field, LOCAL)
    whole = scaling(field)
    for y0, x0, h, w in [(0, 0, 100, 100), (37, 211, 300, 250), (480, 600, 40, 96)]:
        part = scaling(field[y0 : y0 + h, x0 : x0 + w], y0, x0)
        np.testing.assert_array_equal(part, whole[y0 : y0 + h, x0 : x0 + w])


def test_cell_statistics_of_cell_aligned_bands_are_the_whole_images() -> None:
    field, _ = _field()
    lum = luminance(field)
    bands = np.concatenate([cell_stats(lum[y0 : y0 + 128], 32) for y0 in range(0, lum.shape[0], 128)], axis=0)
    np.testing.assert_array_equal(bands, cell_stats(lum, 32))


def test_a_slide_read_a_band_at_a_time_has_the_whole_images_maps(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from nuclei.inference import slide
    from nuclei.io.lazy import LazyPlane, SlideSource
    from nuclei.io.planes import PlaneChoice

    field, _ = _field()
    mosaic = np.concatenate([field, field[::-1], field[:, ::-1]], axis=0)  # 1560 rows: 6 bands of 256 + rest
    monkeypatch.setattr(slide, "STATS_BAND", 256)
    tifffile.imwrite(tmp_path / "m.ome.tif", mosaic, tile=(256, 256), ome=True)
    with LazyPlane(SlideSource(str(tmp_path / "m.ome.tif"), PlaneChoice(None, None))) as plane:
        read = slide._slide_scaling(plane, mosaic[::4, ::4], LOCAL, lambda: None)
    whole = measure_scaling(mosaic, LOCAL)
    assert read.maps is not None and whole.maps is not None
    np.testing.assert_array_equal(read.maps.background, whole.maps.background)
    np.testing.assert_array_equal(read.maps.scale, whole.maps.scale)


@pytest.mark.parametrize("image", [np.zeros((300, 200), np.uint8), np.full((64, 64, 3), 7, np.uint16),
                                   np.random.default_rng(0).normal(100, 3, (256, 256)).astype(np.float32),
                                   np.pad(np.full((40, 40), 200, np.uint8), 100)],
                         ids=["zeros", "constant", "noise only", "one square on zeros"])
def test_images_with_nothing_to_measure_give_finite_inputs(image: np.ndarray) -> None:
    out = normalized(image, LOCAL)
    assert out.shape == (*image.shape[:2], 3) and np.isfinite(out).all()
    if image.min() == image.max():
        assert not out.any()  # a uniform image maps to 0


def test_brightfield_keeps_the_percentile_window() -> None:
    field, _ = _field()
    inverted = (4095 - field).astype(np.uint16)  # dark nuclei on a bright background
    scaling = measure_scaling(inverted, LOCAL)
    assert scaling.maps is None
    np.testing.assert_allclose(scaling(inverted), normalized(inverted, Normalization(kind="percentile")))
