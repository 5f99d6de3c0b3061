"""Tests for nuclei.core.postprocess on small synthetic images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import NDArray
from skimage.draw import disk, ellipse

from nuclei.core import postprocess
from nuclei.core.measure import COLUMN_NAMES, measure, median_diameter
from nuclei.core.postprocess import Thresholds, binary_mask, drop_unsure, instances, remove_small
from nuclei.core.targets import contact_zone, core_targets


def _discs(shape: tuple[int, int], discs: list[tuple[int, int, int]]) -> NDArray[np.uint32]:
    """Instance labels with one disc (row, col, radius) per label, later discs drawn on top."""
    labels = np.zeros(shape, dtype=np.uint32)
    for i, (r, c, radius) in enumerate(discs, start=1):
        rr, cc = disk((r, c), radius, shape=shape)
        labels[rr, cc] = i
    return labels


def _perfect_prob(labels: NDArray[np.uint32], with_core: bool) -> NDArray[np.float32]:
    """Probability map a perfect model would output for these labels."""
    channels = [labels > 0]
    if with_core:
        channels.append(core_targets(labels))
    return np.stack(channels, axis=-1).astype(np.float32)


def _iou(a: NDArray[np.bool_], b: NDArray[np.bool_]) -> float:
    return float((a & b).sum() / (a | b).sum())


def _best_ious(truth: NDArray[np.uint32], pred: NDArray[np.uint32]) -> list[float]:
    """For every true object, the best IoU with any predicted object."""
    best = []
    for t in range(1, int(truth.max()) + 1):
        tmask = truth == t
        best.append(max(_iou(tmask, pred == p) for p in range(1, int(pred.max()) + 1)))
    return best


def _assert_consecutive(labels: NDArray[np.uint32]) -> None:
    assert labels.dtype == np.uint32
    present = np.unique(labels[labels > 0])
    assert present.tolist() == list(range(1, present.size + 1))


TOUCHING = [(30, 25, 12), (30, 45, 12)]


def test_binary_mask_thresholds_channel_zero() -> None:
    prob = np.zeros((4, 5, 2), np.float32)
    prob[1, 2, 0] = 0.7
    prob[2, 2, 1] = 0.9
    mask = binary_mask(prob, Thresholds(foreground=0.5))
    assert mask.dtype == bool and mask.shape == (4, 5)
    assert mask.sum() == 1 and mask[1, 2]


def test_touching_discs_split_with_distance_watershed() -> None:
    truth = _discs((60, 70), TOUCHING)
    labels = instances(_perfect_prob(truth, with_core=False), Thresholds())
    assert labels.shape == truth.shape
    _assert_consecutive(labels)
    assert labels.max() == 2
    assert min(_best_ious(truth, labels)) > 0.8


def test_touching_discs_split_with_core_channel() -> None:
    truth = _discs((60, 70), TOUCHING)
    prob = _perfect_prob(truth, with_core=True)
    labels = instances(prob, Thresholds())
    _assert_consecutive(labels)
    assert labels.max() == 2
    assert min(_best_ious(truth, labels)) > 0.8


def test_elongated_nucleus_is_one_object_without_core_channel() -> None:
    truth = np.zeros((60, 120), np.uint32)
    rr, cc = ellipse(30, 60, 9, 45, shape=truth.shape, rotation=0.3)
    truth[rr, cc] = 1
    labels = instances(_perfect_prob(truth, with_core=False), Thresholds())
    assert labels.max() == 1


def test_full_image_foreground_is_one_object() -> None:
    for channels in (1, 2):
        labels = instances(np.ones((30, 40, channels), np.float32), Thresholds())
        assert labels.max() == 1 and (labels == 1).all()
    assert core_targets(np.ones((30, 40), np.uint16))[15, 20]


def test_nucleus_without_core_is_kept() -> None:
    truth = _discs((60, 90), [(30, 20, 10), (30, 65, 10)])
    prob = _perfect_prob(truth, with_core=True)
    prob[..., 1][truth == 2] = 0.0  # the model missed the core of the second nucleus
    labels = instances(prob, Thresholds())
    assert labels.max() == 2
    assert min(_best_ious(truth, labels)) > 0.99


def test_small_objects_are_dropped_and_labels_consecutive() -> None:
    truth = _discs((60, 90), [(15, 15, 8), (45, 45, 1), (30, 75, 8)])  # the middle one has 5 pixels
    for with_core in (False, True):
        labels = instances(_perfect_prob(truth, with_core), Thresholds(min_size=8))
        _assert_consecutive(labels)
        assert labels.max() == 2
        assert labels[45, 45] == 0
        kept = instances(_perfect_prob(truth, with_core), Thresholds(min_size=1))
        assert kept.max() == 3


@pytest.mark.parametrize("label", [postprocess._instances_whole, postprocess._instances_by_blob])
def test_a_speck_of_core_does_not_split_its_nucleus(label) -> None:  # type: ignore[no-untyped-def]
    """A large nucleus whose core came out as one big piece and a detached speck (a textured or dividing
    nucleus) stays one nucleus; two cores of like size in one blob still split it."""
    big = _discs((80, 120), [(40, 40, 25)])
    prob = _perfect_prob(big, with_core=True)
    prob[18:21, 38:41, 1] = 1.0  # a 9 px speck of core near the rim, apart from the ~450 px core
    assert instances(prob, Thresholds(min_size=1)).max() == 1
    assert label(prob, Thresholds(min_size=1)).max() == 1
    pair = _discs((80, 120), [(40, 40, 18), (40, 72, 18)])
    assert label(_perfect_prob(pair, with_core=True), Thresholds(min_size=1)).max() == 2


def test_unsure_nuclei_are_dropped_and_the_rest_renumbered() -> None:
    truth = _discs((60, 120), [(30, 20, 10), (30, 60, 10), (30, 100, 10)])
    prob = _perfect_prob(truth, with_core=True)
    prob[..., 0][truth == 2] = 0.7  # the model half-believes the middle one
    assert instances(prob, Thresholds()).max() == 3
    kept = instances(prob, Thresholds(confidence=0.8))
    _assert_consecutive(kept)
    assert kept.max() == 2 and kept[30, 60] == 0 and kept[30, 100] == 2
    labels = instances(prob, Thresholds())
    assert np.array_equal(drop_unsure(labels, prob[..., 0], 0.8), kept)
    assert np.array_equal(drop_unsure(labels, prob[..., 0], 0.0), labels)


def test_remove_small_gives_what_instances_gives_with_that_min_size() -> None:
    """Threshold tuning labels once and applies each min size (and confidence) afterwards: it must equal
    labelling again."""
    rng = np.random.default_rng(3)
    truth = _discs((96, 128), [(int(r), int(c), int(s)) for r, c, s in zip(
        rng.integers(5, 91, 40), rng.integers(5, 123, 40), rng.integers(1, 9, 40), strict=True)])
    prob = np.clip(_perfect_prob(truth, with_core=True) * 0.8 + rng.random((96, 128, 2)) * 0.3, 0, 1)
    prob[..., 0] *= rng.uniform(0.6, 1.0, int(truth.max()) + 1)[truth]  # some nuclei believed less than others
    once = instances(prob, Thresholds(foreground=0.5, core=0.6, min_size=1))
    for min_size in (1, 8, 24, 60):
        expected = instances(prob, Thresholds(foreground=0.5, core=0.6, min_size=min_size))
        assert np.array_equal(remove_small(once, min_size), expected)
        for confidence in (0.6, 0.75):
            expected = instances(prob, Thresholds(foreground=0.5, core=0.6, min_size=min_size, confidence=confidence))
            assert np.array_equal(drop_unsure(remove_small(once, min_size), prob[..., 0], confidence), expected)
    assert remove_small(once, 24).max() < once.max()
    assert drop_unsure(once, prob[..., 0], 0.75).max() < once.max()


def test_empty_probability_gives_no_objects() -> None:
    for channels in (1, 2):
        labels = instances(np.zeros((20, 30, channels), np.float32), Thresholds())
        assert labels.shape == (20, 30) and labels.dtype == np.uint32 and labels.max() == 0


def test_core_targets_nonempty_and_inside_each_nucleus() -> None:
    truth = _discs(
        (80, 100),
        [(20, 20, 10), (20, 38, 10), (25, 29, 6), (60, 70, 15), (60, 20, 1), (70, 45, 3)],
    )
    truth[5, 90:92] = 9  # a 2-pixel sliver: all border
    truth[0:3, 0:3] = 7  # touches the image corner
    core = core_targets(truth)
    assert core.dtype == bool and core.shape == truth.shape
    assert not core[truth == 0].any()
    for label in np.unique(truth[truth > 0]):
        obj = truth == label
        assert core[obj].any(), f"nucleus {label} has no core"
        assert core[obj].sum() < obj.sum() or obj.sum() <= 3
    # touching nuclei keep separate cores: no core pixel touches a core pixel of another nucleus
    core_labels = np.where(core, truth, 0)
    horizontal = (core_labels[:, 1:] > 0) & (core_labels[:, :-1] > 0)
    assert (core_labels[:, 1:][horizontal] == core_labels[:, :-1][horizontal]).all()
    vertical = (core_labels[1:] > 0) & (core_labels[:-1] > 0)
    assert (core_labels[1:][vertical] == core_labels[:-1][vertical]).all()


def test_core_targets_disc_is_inner_half() -> None:
    truth = _discs((41, 41), [(20, 20, 16)])
    core = core_targets(truth)
    rows, cols = np.nonzero(core)
    radius = np.hypot(rows - 20, cols - 20)
    assert radius.max() < 10  # about half the radius around the centre
    assert core[20, 20]


def test_core_targets_empty_and_sparse_ids() -> None:
    assert not core_targets(np.zeros((5, 6), np.uint16)).any()
    sparse = np.zeros((20, 20), np.uint32)
    sparse[2:9, 2:9] = 4_000_000_000
    sparse[11:18, 11:18] = 17
    core = core_targets(sparse)
    assert core[5, 5] and core[14, 14]


def test_contact_zone_marks_seams_and_narrow_gaps_only() -> None:
    labels = np.zeros((20, 40), np.uint32)
    labels[2:10, 2:10] = 1
    labels[2:10, 10:18] = 2  # touches 1 along column 10
    labels[2:10, 20:28] = 3_000_000_000  # 2 pixels of background from 2: a narrow gap, huge id
    labels[14:18, 33:37] = 5  # alone
    zone = contact_zone(labels, radius=2)
    assert zone[5, 8:12].all() and not zone[5, 7] and not zone[5, 12]  # 2 pixels either side of the seam
    assert zone[5, 18:20].all() and not zone[5, 17] and not zone[5, 20]  # the gap, which both are near
    assert not zone[:, :6].any() and not zone[12:, :].any()  # lone edges and the lone nucleus: no contact
    assert not contact_zone(np.zeros((5, 5), np.uint8)).any()


def test_measure_square_is_exact() -> None:
    labels = np.zeros((20, 30), np.uint16)
    labels[4:10, 6:16] = 3  # 6 x 10 square
    labels[12:14, 20:21] = 5
    image = np.zeros((20, 30, 3), np.float32)
    image[labels == 3] = (0.2, 0.4, 0.6)
    table = measure(labels, image)
    assert table.shape == (2, len(COLUMN_NAMES)) and table.dtype == np.float64
    row = dict(zip(COLUMN_NAMES, table[0], strict=True))
    assert row["label"] == 3
    assert row["area_px"] == 60
    assert row["centroid_y_px"] == pytest.approx(6.5)
    assert row["centroid_x_px"] == pytest.approx(10.5)
    assert (row["bbox_min_y_px"], row["bbox_min_x_px"], row["bbox_max_y_px"], row["bbox_max_x_px"]) == (4, 6, 10, 16)
    assert row["mean_intensity_raw"] == pytest.approx(0.4)
    assert row["integrated_intensity_raw"] == pytest.approx(24.0)
    assert row["extent"] == 1.0 and row["solidity"] == 1.0 and row["euler_number"] == 1
    assert np.isnan(row["area_um2"])  # no pixel size: no micrometres made up
    second = dict(zip(COLUMN_NAMES, table[1], strict=True))
    assert second["label"] == 5 and second["area_px"] == 2 and second["mean_intensity_raw"] == 0


def test_measure_grayscale_and_empty() -> None:
    labels = np.zeros((8, 8), np.uint32)
    labels[2:4, 2:4] = 1
    image = np.full((8, 8), 0.25)
    row = dict(zip(COLUMN_NAMES, measure(labels, image, pixel_size_um=0.5)[0], strict=True))
    assert row["mean_intensity_raw"] == pytest.approx(0.25) and row["std_intensity_raw"] == 0
    assert row["area_um2"] == pytest.approx(4 * 0.25) and row["centroid_x_um"] == pytest.approx(2.5 * 0.5)
    empty = measure(np.zeros((8, 8), np.uint32), image)
    assert empty.shape == (0, len(COLUMN_NAMES))


@pytest.mark.parametrize("dtype, low, high", [(np.float32, 0.0, 4080.0), (np.float32, -300.0, 300.0),
                                              (np.uint32, 0, 4_000_000_000), (np.int32, -2**31, 2**31 - 1)])
def test_intensities_are_in_the_files_own_units(dtype: type, low: float, high: float) -> None:
    """Issue 28 case 4: float images of 0..4080 gave 1.0 for every nucleus, background-subtracted (negative)
    floats 0, 32-bit integers about 1e-5. The values are now the file's own, whatever its type."""
    rng = np.random.default_rng(7)
    labels = np.zeros((40, 50), np.uint16)
    labels[5:15, 5:20], labels[20:35, 25:45] = 1, 2
    image = rng.uniform(low, high, (40, 50)).astype(dtype)
    table = {name: column for name, column in zip(COLUMN_NAMES, measure(labels, image).T, strict=True)}
    for i, label in enumerate((1, 2)):
        values = image[labels == label].astype(np.float64)
        assert table["mean_intensity_raw"][i] == pytest.approx(values.mean(), rel=1e-9)
        assert table["integrated_intensity_raw"][i] == pytest.approx(values.sum(), rel=1e-9)
        assert table["std_intensity_raw"][i] == pytest.approx(values.std(), rel=1e-6)
        assert (table["min_intensity_raw"][i], table["max_intensity_raw"][i]) == (values.min(), values.max())


def test_thresholds_round_trip() -> None:
    original = Thresholds(foreground=0.3, core=0.65, min_size=20, confidence=0.8)
    restored = Thresholds.from_dict(json.loads(json.dumps(original.as_dict())))
    assert restored == original
    assert Thresholds.from_dict({}) == Thresholds()
    with pytest.raises(ValueError):
        Thresholds.from_dict({"forground": 0.4})
    with pytest.raises(ValueError):
        Thresholds(foreground=1.5)
    with pytest.raises(ValueError):
        Thresholds(confidence=-0.1)


def test_round_trip_many_nuclei() -> None:
    rng = np.random.default_rng(0)
    shape = (200, 240)
    truth = np.zeros(shape, np.uint32)
    n = 0
    for _ in range(200):
        r, c = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        radius = int(rng.integers(6, 11))
        rr, cc = disk((r, c), radius, shape=shape)
        if (truth[rr, cc] > 0).mean() > 0.1:  # only slight overlaps: touching, not hidden
            continue
        n += 1
        free = truth[rr, cc] == 0
        truth[rr[free], cc[free]] = n
    assert n >= 15
    labels = instances(_perfect_prob(truth, with_core=True), Thresholds())
    _assert_consecutive(labels)
    assert labels.max() == n
    ious = _best_ious(truth, labels)
    assert min(ious) > 0.8, sorted(ious)[:5]


@pytest.mark.parametrize("shift", [0, 10**12])
def test_measure_matches_regionprops_across_row_blocks(shift: int) -> None:
    """Labels with gaps (and, shifted, huge ids) on an image taller than one block of rows."""
    from skimage.measure import regionprops

    rng = np.random.default_rng(3)
    labels = np.zeros((1300, 90), np.int64)
    for i, (y, x) in enumerate(rng.integers(0, [1280, 80], size=(25, 2)), start=1):
        labels[y : y + 20, x : x + 9] = 3 * i  # overlapping squares: gaps and odd shapes
    labels[labels > 0] += shift
    image = rng.random((1300, 90, 3))
    table = measure(labels, image)
    props = regionprops(np.where(labels > 0, labels - shift, 0), intensity_image=image.mean(axis=-1))
    assert table[:, 0].tolist() == [p.label + shift for p in props]
    for values, p in zip(table, props, strict=True):
        row = dict(zip(COLUMN_NAMES, values, strict=True))
        assert row["area_px"] == p.area
        assert (row["centroid_y_px"], row["centroid_x_px"]) == pytest.approx(p.centroid)
        assert [row[f"bbox_{e}_{a}_px"] for e in ("min", "max") for a in "yx"] == list(p.bbox)
        assert row["mean_intensity_raw"] == pytest.approx(p.intensity_mean)
        assert row["std_intensity_raw"] == pytest.approx(p.intensity_std)
        assert (row["min_intensity_raw"], row["max_intensity_raw"]) == pytest.approx((p.intensity_min,
                                                                                      p.intensity_max))
        assert row["integrated_intensity_raw"] == pytest.approx(p.intensity_mean * p.area)
        assert row["major_axis_length_px"] == pytest.approx(p.axis_major_length)
        assert row["minor_axis_length_px"] == pytest.approx(p.axis_minor_length, abs=1e-6)
        assert row["eccentricity"] == pytest.approx(p.eccentricity, abs=1e-6)
        assert row["orientation_deg"] == pytest.approx(np.degrees(p.orientation), abs=1e-6)
        assert (row["perimeter_px"], row["solidity"], row["extent"], row["euler_number"]) == pytest.approx(
            (p.perimeter, p.solidity, p.extent, p.euler_number))


def test_outline_features_of_touching_holed_and_broken_labels_are_regionprops_own() -> None:
    """Perimeter and Euler number are computed for all labels at once: the same as scikit-image on each
    label's own crop, for labels that touch, have holes, are in pieces or meet the image's edge."""
    from skimage.measure import regionprops

    rng = np.random.default_rng(0)
    for _ in range(10):
        labels = rng.integers(0, 6, (60, 70))
        labels[rng.random(labels.shape) < 0.3] = 0
        table = measure(labels, labels.astype(np.float64))
        props = regionprops(labels)
        at = {name: i for i, name in enumerate(COLUMN_NAMES)}
        assert table[:, at["perimeter_px"]] == pytest.approx([p.perimeter for p in props], abs=1e-9)
        assert table[:, at["euler_number"]].tolist() == [p.euler_number for p in props]
        assert table[:, at["solidity"]] == pytest.approx([p.solidity for p in props])


def test_median_diameter_is_the_equivalent_diameter_of_the_median_nucleus() -> None:
    small, large = np.zeros((40, 40), np.int32), np.zeros((40, 40), np.int32)
    small[:4, :4] = 1  # 16 px
    small[10:20, 10:20] = 2  # 100 px
    large[:10, :10] = 1  # 100 px
    assert median_diameter([small, large]) == pytest.approx(2 * np.sqrt(100 / np.pi))
    assert median_diameter([np.zeros((8, 8), np.int32)]) == 0.0 and median_diameter([]) == 0.0


@pytest.mark.parametrize("thresholds", [Thresholds(), Thresholds(foreground=0.3, core=0.5, min_size=1),
                                        Thresholds(foreground=0.7, core=0.9, min_size=80)])
def test_whole_image_and_blob_by_blob_labelling_agree_on_real_predictions(thresholds: Thresholds) -> None:
    """The one-pass labelling (images up to WHOLE_IMAGE_MAX_PIXELS) and the blob-by-blob one (larger images)
    give the same nuclei, numbered alike, on the shipped model's probabilities for the sample images; they
    may differ only where a watershed tie falls the other way (pixels at equal distance from two cores), which
    can push one piece across min_size."""
    from nuclei.core import postprocess
    from nuclei.inference.engine import Engine
    from nuclei.io.images import read_image
    from nuclei.modeldir import default_model_path, load_model_dir
    from tests.conftest import SAMPLES

    engine = Engine(load_model_dir(default_model_path()), threads=1)
    for path in sorted((SAMPLES / "images").glob("*.png")):
        prob = engine.predict(read_image(path))
        whole = postprocess._instances_whole(prob, thresholds)
        by_blob = postprocess._instances_by_blob(prob, thresholds)
        assert np.array_equal(instances(prob, thresholds), whole)
        assert abs(int(whole.max()) - int(by_blob.max())) <= 1, path.name
        if whole.max() == by_blob.max():
            assert np.count_nonzero(whole != by_blob) <= 0.002 * whole.size, path.name


def test_threshold_tuning_picks_a_confidence_cut_off_that_drops_faint_false_nuclei() -> None:
    """Faint blobs (foreground 0.75, above every foreground threshold tried) that are not nuclei: only a
    confidence cut-off removes them, and tuning finds one that keeps the real (0.95) nuclei."""
    from nuclei.evaluation import choose_thresholds

    rng = np.random.default_rng(5)
    probs, truths = [], []
    for _ in range(4):
        centres = [(int(r), int(c), 7) for r, c in zip(rng.integers(10, 54, 6), range(10, 190, 30), strict=True)]
        drawn = _discs((64, 200), centres)
        prob = _perfect_prob(drawn, with_core=True)
        faint = np.isin(drawn, [2, 5])
        prob[..., 0] = np.where(faint, 0.75, prob[..., 0] * 0.95)
        probs.append(prob)
        truths.append(np.where(faint, 0, drawn).astype(np.uint32))
    chosen, score = choose_thresholds(probs, truths)
    assert 0.75 < chosen.confidence <= 0.95
    assert score == pytest.approx(2.0)  # DSB score + AP@0.5, both perfect once the faint ones are gone


def test_the_exported_model_cards_code_gives_what_instances_gives() -> None:
    """A bioimage.io package tells other tools, in a few lines of numpy/scipy/scikit-image, how to turn the
    probabilities into nuclei; run those lines on the shipped model's output for the sample images."""
    import re
    from dataclasses import replace

    from nuclei.export.model_card import instances_section
    from nuclei.inference.engine import Engine
    from nuclei.io.images import read_image
    from nuclei.modeldir import default_model_path, load_model_dir
    from tests.conftest import SAMPLES

    shipped = load_model_dir(default_model_path())
    model = replace(shipped, thresholds=replace(shipped.thresholds, confidence=0.85))  # every line does something
    code = re.search(r"```python\n(.*?)```", instances_section(model), re.S)
    assert code is not None
    engine = Engine(shipped, threads=1)
    for path in sorted((SAMPLES / "images").glob("*.png")):
        prob = engine.predict(read_image(path))
        namespace: dict[str, object] = {}
        exec(code.group(1).replace("prob = ...", "prob = given"), {"given": prob}, namespace)
        documented, ours = namespace["labels"], instances(prob, model.thresholds)
        assert abs(int(documented.max()) - int(ours.max())) <= 1, path.name  # type: ignore[attr-defined]
        # numbered in another order: compare as partitions, each of our nuclei against its best match
        pairs, count = np.unique(np.stack([ours.ravel(), np.asarray(documented).ravel()]), axis=1,
                                 return_counts=True)
        best = np.zeros(int(ours.max()) + 1, np.int64)
        np.maximum.at(best, pairs[0], count)
        assert count.sum() - best.sum() <= 0.002 * ours.size, path.name
