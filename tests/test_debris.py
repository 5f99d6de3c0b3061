"""The debris rule (`nuclei.core.debris`): which small objects go, which stay, and where it applies."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from nuclei.core.debris import debris_ids, drop_debris, typical_area


def _disc(out: np.ndarray, y: int, x: int, radius: float, value: float) -> None:
    yy, xx = np.mgrid[0 : out.shape[0], 0 : out.shape[1]]
    out[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = value


def _field() -> tuple[np.ndarray, np.ndarray]:
    """Four nuclei 24 px across (ids 1-4, intensity 100) and small objects: 5 a bright speck alone, 6 a bright
    speck beside nucleus 1, 7 a bright speck cut by the edge, 8 a dim speck alone."""
    labels, image = np.zeros((160, 200), np.uint32), np.full((160, 200), 10.0)
    for i, (y, x) in enumerate([(40, 40), (40, 150), (120, 40), (120, 150)], start=1):
        _disc(labels, y, x, 12, i)
        _disc(image, y, x, 12, 100)
    for i, (y, x, value) in enumerate([(80, 95, 250), (40, 57, 250), (1, 95, 250), (140, 95, 40)], start=5):
        _disc(labels, y, x, 3.5, i)  # 38 px: above the shipped model's minimum size
        _disc(image, y, x, 3.5, value)
    return labels, image


def test_a_bright_speck_alone_is_debris_and_small_objects_beside_nuclei_dim_or_cut_are_not() -> None:
    labels, image = _field()
    assert debris_ids(labels, image).tolist() == [5]
    kept = drop_debris(labels, image)
    assert kept.max() == 7 and np.array_equal(np.unique(kept), np.arange(8)), "renumbered 1..N"
    assert not kept[80, 95], "the speck is gone"
    assert kept[40, 55] and kept[1, 95] and kept[140, 95]
    assert np.array_equal(kept[labels == 6], np.full((labels == 6).sum(), 5)), "later ids move down by one"


def test_the_typical_nucleus_is_the_area_weighted_median_so_many_specks_do_not_shrink_it() -> None:
    areas = np.array([500] * 10 + [20] * 40)
    assert np.median(areas) == 20  # the plain median is a speck's
    assert typical_area(areas) == 500
    assert typical_area(np.array([], int)) == 0.0


def test_a_colour_image_uses_its_mean_and_nothing_small_leaves_the_labels_as_they_are() -> None:
    labels, image = _field()
    assert debris_ids(labels, np.stack([image] * 3, axis=-1)).tolist() == [5]
    big = labels.copy()
    big[big > 4] = 0
    assert drop_debris(big, image) is not None and np.array_equal(drop_debris(big, image), big)


@pytest.fixture(scope="module")
def engine():  # type: ignore[no-untyped-def]
    from nuclei.inference.engine import Engine
    from nuclei.modeldir import default_model_path, load_model_dir

    return Engine(load_model_dir(default_model_path()), providers=("CPUExecutionProvider",))


def _probabilities(labels: np.ndarray) -> np.ndarray:
    """What a network that saw exactly these objects would output: foreground and core (the inner half)."""
    from scipy import ndimage as ndi

    fg = (labels > 0).astype(np.float32)
    core = np.zeros_like(fg)
    for i in range(1, int(labels.max()) + 1):
        own = labels == i
        core[ndi.distance_transform_edt(own) > 1] = 1.0
    return np.stack([fg * 0.95, core * 0.95], axis=-1)


def test_segmentation_drops_debris_unless_told_not_to_and_never_in_stained_brightfield(engine) -> None:  # type: ignore[no-untyped-def]
    from nuclei.inference.sizing import nuclei_of

    labels, image = _field()
    prob = _probabilities(labels)
    grey = image.astype(np.uint8)
    assert nuclei_of(engine, grey, prob).max() == 7
    assert nuclei_of(replace(engine, drop_debris=False), grey, prob).max() == 8
    # H&E-like: pink background, dark purple objects; brightness does not mean nucleus here, so the rule is off
    stained = np.empty((*labels.shape, 3), np.uint8)
    stained[:] = (235, 200, 220)
    stained[labels > 0] = (90, 40, 140)
    assert nuclei_of(engine, stained, prob).max() == 8


def test_the_setting_is_part_of_what_decides_an_entrys_labels(engine) -> None:  # type: ignore[no-untyped-def]
    assert engine.output_key != replace(engine, drop_debris=False).output_key
