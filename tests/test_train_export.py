"""Training through the real `train` flow (TensorFlow), ONNX export and parity (tf2onnx + ONNX Runtime)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import onnxruntime as ort
import pytest

from nuclei.config import TrainConfig
from nuclei.core.tiling import pad_to_multiple
from nuclei.errors import ModelError
from nuclei.modeldir import load_model_dir
from nuclei.plots import read_history, stage_starts
from nuclei.training.export import export_onnx, parity_check
from nuclei.training.fit import predict_keras
from nuclei.training.model import unet, unet_receptive_field
from tests.conftest import SAMPLES

MODEL_FILES = ("config.json", "model.onnx", "model.keras", "thresholds.json", "metrics.json", "history.csv",
               "curves.png", "data.json", "versions.json", "evaluation/per_image.csv")


def test_train_flow_writes_a_complete_model_directory(trained_model: Path) -> None:
    for name in MODEL_FILES:
        assert (trained_model / name).is_file(), name
    config = json.loads((trained_model / "config.json").read_text())
    assert config["channels"] == ["foreground", "core"] and config["pad_multiple"] == 8
    history = (trained_model / "history.csv").read_text().splitlines()
    assert len(history) == 3 and "val_loss" in history[0]  # header + 2 epochs
    metrics = json.loads((trained_model / "metrics.json").read_text())
    assert metrics["overall"]["n_images"] == 2 and 0.0 <= metrics["overall"]["dsb_score"] <= 1.0
    data = json.loads((trained_model / "data.json").read_text())
    assert len(data["train_ids"]) == 8 and len(data["val_ids"]) == 2  # seeded 80:20 of 10 images
    assert not set(data["train_ids"]) & set(data["val_ids"])
    assert "tensorflow" in json.loads((trained_model / "versions.json").read_text())
    assert not list(trained_model.parent.glob(".tiny.partial"))  # published atomically
    assert load_model_dir(trained_model).version.startswith("tiny@")


def test_keras_model_loads_in_safe_mode(trained_model: Path) -> None:
    model = keras.saving.load_model(trained_model / "model.keras", safe_mode=True, compile=False)
    assert model.output_shape[-1] == 2


@pytest.mark.parametrize("size", [(64, 64), (97, 131), (200, 72), (33, 250)])
def test_onnx_matches_keras_on_sizes_not_multiple_of_16(trained_model: Path, size: tuple[int, int]) -> None:
    model = keras.saving.load_model(trained_model / "model.keras", compile=False)
    session = ort.InferenceSession(str(trained_model / "model.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(1).random((*size, 3), dtype=np.float32)
    expected = predict_keras(model, image, multiple=8)
    got = session.run(["mask"], {"image": pad_to_multiple(image, 8)[None]})[0][0, : size[0], : size[1]]
    assert got.shape == expected.shape == (*size, 2)
    assert np.abs(got - expected).max() < 1e-4


def test_onnx_signature_is_nhwc_image_to_mask(trained_model: Path) -> None:
    session = ort.InferenceSession(str(trained_model / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[3]) == ("image", "tensor(float)", 3)
    assert out.name == "mask"
    assert all(isinstance(d, str) or d is None for d in inp.shape[:3])  # dynamic batch, H, W


def test_parity_check_fails_when_the_onnx_model_differs(tmp_path: Path) -> None:
    model_a, model_b = unet(1, depth=2, base_filters=4), unet(1, depth=2, base_filters=4)
    onnx_path = export_onnx(model_b, tmp_path / "other.onnx")
    with pytest.raises(ModelError, match="differs from Keras"):
        parity_check(model_a, onnx_path, multiple=4)
    assert parity_check(model_b, onnx_path, multiple=4) < 1e-4


def test_receptive_field_bound_is_not_exceeded() -> None:
    """Changing one input pixel never changes outputs further away than half the computed receptive field."""
    model = unet(1, depth=2, base_filters=4)
    rng = np.random.default_rng(0)
    image = rng.random((1, 96, 96, 3), dtype=np.float32)
    changed = image.copy()
    changed[0, 48, 48] += 5.0
    diff = np.abs(np.asarray(model(changed)) - np.asarray(model(image)))[0, ..., 0]
    ys, xs = np.nonzero(diff > 0)
    reach = max(np.abs(ys - 48).max(), np.abs(xs - 48).max())
    assert 0 < reach <= unet_receptive_field(2) // 2


def test_config_rejects_crop_not_multiple_of_network() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        TrainConfig(data_dir=".", crop_size=100)


def test_fine_tune_from_a_model_directory(trained_model: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    """init_from starts from the previous weights (validated architecture) and still exports with parity."""
    from flows.train import train

    path = Path(train(data_dir=str(synthetic_dir), out_dir=str(tmp_path), name="tuned", epochs=1, batch_size=4,
                      crop_size=64, depth=3, base_filters=8, steps_per_epoch=1, init_from=str(trained_model),
                      balance_categories=True, min_ap50=0.0))
    config = json.loads((path / "config.json").read_text())
    assert config["init_from"] == str(trained_model) and (path / "model.onnx").is_file()
    with pytest.raises(ValueError, match="architecture differs"):
        train(data_dir=str(synthetic_dir), out_dir=str(tmp_path), name="bad", epochs=1, crop_size=64, depth=3,
              base_filters=16, init_from=str(trained_model))


@pytest.mark.slow
def test_staged_training_chains_fine_tuning_in_one_run(synthetic_dir: Path, tmp_path: Path) -> None:
    """`then`: each stage starts from the previous stage's model directory; the last one gets the name."""
    from flows.train import train

    common = dict(data_dir=str(synthetic_dir), out_dir=str(tmp_path), epochs=1, batch_size=4, crop_size=64,
                  depth=3, base_filters=8, steps_per_epoch=1, min_ap50=0.0)
    with pytest.raises(ValueError, match="crop_sise"):  # a typo in a late stage fails before any training
        train(name="typo", then=[{"crop_sise": 96}], **common)
    assert not list(tmp_path.iterdir())
    path = Path(train(name="staged", then=[{"crop_size": 96, "contact_weight": 5.0}], **common))
    assert path == tmp_path / "staged"
    first = json.loads((tmp_path / "staged-stage1" / "config.json").read_text())
    last = json.loads((path / "config.json").read_text())
    assert first["init_from"] is None and first["crop_size"] == 64 and first["contact_weight"] == 0.0
    assert last["init_from"] == str(tmp_path / "staged-stage1") and last["crop_size"] == 96
    assert last["contact_weight"] == 5.0 and (path / "model.onnx").is_file()
    history = read_history(path / "history.csv")  # both stages, epochs counting on
    assert history["stage"] == [1.0, 2.0] and history["epoch"] == [0.0, 1.0] and len(history["val_loss"]) == 2
    assert stage_starts(history) == [(2, 2)]  # curves.png marks where stage 2 begins


def test_stage_plan_names_each_stage_and_carries_changes_forward() -> None:
    """Three stages: NAME-stage1, NAME-stage2, NAME; each is the previous stage with its changes."""
    from flows.train import plan_stages

    params = dict(data_dir="d", out_dir="m", name="unet", crop_size=128, learning_rate=1e-3, init_from=None)
    stages = plan_stages(params, [{"crop_size": 192, "learning_rate": 3e-4}, {"contact_weight": 5.0}])
    assert [s["name"] for s in stages] == ["unet-stage1", "unet-stage2", "unet"]
    assert [s["crop_size"] for s in stages] == [128, 192, 192]
    assert [s["learning_rate"] for s in stages] == [1e-3, 3e-4, 3e-4]
    assert [s.get("contact_weight", 0.0) for s in stages] == [0.0, 0.0, 5.0]
    assert params["name"] == "unet"  # the caller's parameters are left as they were
    with pytest.raises(ValueError, match="crop_sise"):
        plan_stages(params, [{"crop_size": 192}, {"crop_sise": 96}])


def test_contact_weights_make_seam_errors_cost_more() -> None:
    """The last target plane weighs each pixel's cross-entropy: the same mistake costs more on a seam."""
    from nuclei.training.fit import make_targets, segmentation_loss

    labels = np.zeros((16, 16), np.uint16)
    labels[4:12, 2:8], labels[4:12, 8:14] = 1, 2
    plain, weighted = make_targets(labels, ["foreground", "core"]), make_targets(labels, ["foreground", "core"], 5.0)
    assert plain.shape == (16, 16, 3) and (plain[..., 2] == 1).all()
    assert weighted[8, 8, 2] == 6.0 and weighted[8, 3, 2] == 1.0 and weighted[0, 0, 2] == 1.0
    pred = plain[..., :2].copy()
    seam_error, inner_error = pred.copy(), pred.copy()
    seam_error[8, 8, 0], inner_error[8, 3, 0] = 0.0, 0.0
    loss = {name: float(segmentation_loss(weighted[None], p[None].clip(0.01, 0.99)))
            for name, p in (("seam", seam_error), ("inner", inner_error))}
    assert loss["seam"] > loss["inner"] + 1e-3


def test_sampling_weights_give_each_data_set_a_share_and_favour_rare_types() -> None:
    from nuclei.io.datasets import Sample
    from nuclei.training.fit import sampling_weights

    def sample(dataset: str, category: str) -> Sample:
        return Sample("x", np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint16), Path("x.png"),
                      dataset=dataset, meta={"category": category})

    samples = [sample("big", "grey")] * 81 + [sample("big", "colour")] * 9 + [sample("small", "grey")] * 16
    weights = sampling_weights(samples, by_category=True)
    assert weights.sum() == pytest.approx(1.0)
    big, small = weights[:90].sum(), weights[90:].sum()
    assert big / small == pytest.approx(90**0.25 / 16**0.25)  # fourth root of each set's size
    assert weights[81] == pytest.approx(3 * weights[0])  # 1/sqrt(9) vs 1/sqrt(81) within a set
    flat = sampling_weights(samples[:90], by_category=False)
    assert np.allclose(flat, 1 / 90)
    favoured = sampling_weights(samples, by_category=True, dataset_weights={"small": 2.0})
    assert favoured[90:].sum() / favoured[:90].sum() == pytest.approx(2 * small / big)
    assert favoured[81] == pytest.approx(3 * favoured[0])  # the types within a set keep their balance


def test_int8_variant_is_kept_only_when_as_good(trained_model: Path, synthetic_dir: Path, tmp_path: Path) -> None:
    """quantize_int8: ONNX Runtime static quantisation; the verdict and the file agree, and inference uses it."""
    from flows.train import train
    from nuclei.inference.engine import Engine

    path = Path(train(data_dir=str(synthetic_dir), out_dir=str(tmp_path), name="q", epochs=1, batch_size=4,
                      crop_size=64, depth=3, base_filters=8, steps_per_epoch=1, quantize_int8=True, min_ap50=0.0))
    verdict = json.loads((path / "int8.json").read_text())
    assert verdict["kept"] == (path / "model.int8.onnx").is_file()
    assert verdict["kept"] == (abs(verdict["dsb_score"] - verdict["float32_dsb_score"]) <= verdict["tolerance"])
    model = load_model_dir(path)
    assert Engine(model, ("CPUExecutionProvider",)).precision == ("int8" if verdict["kept"] else "float32")


def test_shipped_model_runs_int8_on_cpu_and_float32_on_request() -> None:
    from nuclei.inference.engine import Engine, cuda_device_count
    from nuclei.modeldir import resolve_model

    model = resolve_model(None)
    assert model.int8_sha256 is not None
    on_gpu = cuda_device_count() > 0  # float32 on a usable GPU, int8 on CPU
    expected = "float32" if on_gpu else "int8"
    assert Engine(model, ("CUDAExecutionProvider", "CPUExecutionProvider")).precision == expected
    float_engine = Engine(model, ("CPUExecutionProvider",), int8=False)
    assert float_engine.precision == "float32"
    from nuclei.io.images import read_raw

    image = read_raw(sorted((SAMPLES / "images").glob("*.png"))[0])
    int8_prob = Engine(model, ("CPUExecutionProvider",)).predict(image)
    float_prob = float_engine.predict(image)
    assert np.mean((int8_prob[..., 0] > 0.5) == (float_prob[..., 0] > 0.5)) > 0.97  # quantised, not another model


def test_train_command_passes_every_option_and_flag_to_the_flow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument wiring only (the flow itself is tested above): switches like --quantize-int8 must arrive."""
    import flows.train
    import nuclei.training.run
    from nuclei.cli.main import main

    seen: dict[str, object] = {}
    from prefect.states import Completed

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(nuclei.training.run, "train", lambda params, then, **_: seen.update(params, then=then) or "x")
    assert main(["train", "data", "--quantize-int8", "--balance-categories", "--no-augment", "--contact-weight", "5",
                 "--then", '{"crop_size": 192}']) == 0
    assert seen["quantize_int8"] is True and seen["balance_categories"] is True and seen["augment"] is False
    assert seen["contact_weight"] == 5.0 and seen["then"] == [{"crop_size": 192}] and "instance_channel" not in seen
    seen.clear()  # with --prefect the same options reach the flow
    monkeypatch.setattr(flows.train, "train", lambda **kwargs: seen.update(kwargs) or Completed(data="models/x"))
    assert main(["train", "data", "--prefect", "--epochs", "3"]) == 0
    assert seen["epochs"] == 3 and seen["data_dir"] == "data"


def test_split_keeps_each_sets_validation_and_holds_whole_groups_out_of_training() -> None:
    from nuclei.io.datasets import Dataset, Sample
    from nuclei.training.steps import split

    def samples(dataset: str, n: int, prefix: str) -> list[Sample]:
        return [Sample(f"{prefix}{i:02d}", np.zeros((2, 2)), np.zeros((2, 2), np.uint16), Path("x"), dataset=dataset)
                for i in range(n)]

    alone = split(Dataset(Path("a"), "paired", samples=samples("a", 20, "a")),
                  TrainConfig(data_dir="a", crop_size=64))
    both = Dataset(Path("a"), "paired",
                   samples=samples("a", 20, "a") + samples("b", 10, "group") + samples("b", 10, "b"))
    data = split(both, TrainConfig(data_dir=["a", "b"], crop_size=64, held_out=["b:id=^group"]))
    assert [s.id for s in data.val if s.dataset == "a"] == [s.id for s in alone.val]  # same split either way
    assert len(data.held_out["b:id=^group"]) == 10
    assert not any(s.id.startswith("group") for s in data.train)
    assert {s.dataset for s in data.val} == {"a", "b"}
    with pytest.raises(ValueError, match="matches no image"):
        split(both, TrainConfig(data_dir=["a", "b"], crop_size=64, held_out=["b:id=^nothing"]))


def test_held_out_groups_can_leave_validation_too() -> None:
    from nuclei.io.datasets import Dataset, Sample
    from nuclei.training.steps import split

    ids = [f"{'group' if i % 2 else 'b'}{i:02d}" for i in range(40)]
    both = Dataset(Path("b"), "paired", samples=[
        Sample(i, np.zeros((2, 2)), np.zeros((2, 2), np.uint16), Path("x"), dataset="b") for i in ids])
    kept = split(both, TrainConfig(data_dir="b", crop_size=64, held_out=["b:id=^group"]))
    left = split(both, TrainConfig(data_dir="b", crop_size=64, held_out=["b:id=^group"],
                                   held_out_in_validation=False))
    assert any(s.id.startswith("group") for s in kept.val)
    assert [s.id for s in left.val] == [s.id for s in kept.val if not s.id.startswith("group")]
    assert [s.id for s in left.train] == [s.id for s in kept.train]
    assert len(left.held_out["b:id=^group"]) == 20  # still scored as a group, validation images included


def test_include_trains_a_specialist_on_its_parents_split_of_one_group() -> None:
    """A stained-tissue specialist keeps exactly the colour tiles its parent trained and validated on."""
    from nuclei.io.datasets import Dataset, Sample
    from nuclei.training.steps import split

    ids = [f"{'stain' if i % 3 else 'grey'}{i:02d}" for i in range(60)]
    data = Dataset(Path("b"), "paired", samples=[
        Sample(i, np.zeros((2, 2)), np.zeros((2, 2), np.uint16), Path("x"), dataset="b") for i in ids])
    parent = split(data, TrainConfig(data_dir="b", crop_size=64))
    only = split(data, TrainConfig(data_dir="b", crop_size=64, include=["b:id=^stain"]))
    assert [s.id for s in only.train] == [s.id for s in parent.train if s.id.startswith("stain")]
    assert [s.id for s in only.val] == [s.id for s in parent.val if s.id.startswith("stain")]
    assert only.val and not only.held_out
    with pytest.raises(ValueError, match="match no image"):
        split(data, TrainConfig(data_dir="b", crop_size=64, include=["b:id=^nothing"]))
    with pytest.raises(ValueError, match="DATASET:FIELD=REGEX"):
        TrainConfig(data_dir="x", include=["stain"])


def test_validation_crops_cover_every_zoom_asked_for(synthetic_dir: Path) -> None:
    """Early stopping can weigh the nucleus sizes a scale range trains for: fixed crops per zoom, zoom 1 as
    before."""
    from nuclei.io.datasets import load_dataset
    from nuclei.training.fit import CropBatches

    samples = load_dataset(synthetic_dir, progress=False).samples[:5]
    plain = CropBatches(samples, TrainConfig(data_dir="x", crop_size=64, batch_size=4), train=False)
    both = CropBatches(samples, TrainConfig(data_dir="x", crop_size=64, batch_size=4, validation_zooms=[1.0, 0.5]),
                       train=False)
    assert len(plain) == 2 and len(both) == 3  # 5 and 10 crops in batches of 4
    first = np.concatenate([plain[i][1] for i in range(len(plain))])
    again = np.concatenate([both[i][1] for i in range(len(both))])
    np.testing.assert_array_equal(again[:5], first)  # the zoom-1 crops are the ones validation always had
    def mean_area(masks: np.ndarray) -> float:
        from scipy import ndimage as ndi

        areas = [np.bincount(ndi.label(m > 0.5)[0].ravel())[1:] for m in masks]
        return float(np.concatenate(areas).mean())

    assert mean_area(again[5:, ..., 0]) < 0.5 * mean_area(first[..., 0])  # zoom 0.5: nuclei a quarter the area
    assert both[0][0].shape == (4, 64, 64, 3)


def test_config_rejects_a_malformed_held_out_rule() -> None:
    with pytest.raises(ValueError, match="DATASET:FIELD=REGEX"):
        TrainConfig(data_dir="x", held_out=["bbbc039"])


def test_retune_chooses_again_what_the_train_flow_chose(trained_model: Path, tmp_path: Path) -> None:
    """After a post-processing change the shipped models are re-tuned without training: the same steps on the
    same split of the same data, so on an unchanged model it gives back the flow's own thresholds and scores."""
    import shutil

    from nuclei.training.retune import retune

    model_dir = tmp_path / "tiny"
    shutil.copytree(trained_model, model_dir)
    flow_metrics = json.loads((model_dir / "metrics.json").read_text())
    (model_dir / "thresholds.json").write_text(json.dumps({"foreground": 0.33, "core": 0.2, "min_size": 3}))
    (model_dir / "metrics.json").unlink()
    thresholds, report = retune(model_dir)
    assert thresholds.as_dict() == flow_metrics["thresholds"]
    assert json.loads((model_dir / "thresholds.json").read_text()) == flow_metrics["thresholds"]
    assert report.overall() == pytest.approx(flow_metrics["overall"])


def test_joined_fields_abut_along_a_line_with_every_nucleus_labelled() -> None:
    """A stitched mosaic's seam for training: this field's nuclei on one side, the other's beyond, each cut by the
    line and still labelled, the other's ids after this one's."""
    from nuclei.training.microscope import joined

    yy, xx = np.mgrid[0:64, 0:64]
    labels = np.zeros((64, 64), np.int32)
    labels[(yy - 32) ** 2 + (xx - 32) ** 2 < 400] = 1  # cut by any line through the middle half
    other_labels = np.zeros((64, 64), np.uint16)
    other_labels[(yy - 20) ** 2 + (xx - 40) ** 2 < 64] = 1
    other_labels[(yy - 50) ** 2 + (xx - 20) ** 2 < 64] = 2
    raw, other_raw = np.where(labels > 0, 200, 10).astype(np.uint8), np.where(other_labels > 0, 90, 5).astype(np.uint8)
    for seed in range(8):
        out, out_labels = joined(raw, labels, other_raw, other_labels, np.random.default_rng(seed))
        mine = out_labels == 1
        assert out.dtype == np.uint8 and out_labels.dtype == np.int32
        assert set(np.unique(out[mine])) == {200} and set(np.unique(out[out_labels > 1])) <= {90}
        assert np.isin(np.unique(out_labels), [0, 1, 2, 3]).all() and 0 < mine.sum() < (labels == 1).sum()
        here = np.isin(out, [10, 200])  # this field's pixels (its background 10), the rest the other's (5, 90)
        assert np.isin(out[~here], [5, 90]).all() and 0.2 < here.mean() < 0.8
        assert (here == here[:1]).all() or (here == here[:, :1]).all()  # split by a straight line
        np.testing.assert_array_equal(out_labels[here], labels[here])


def test_field_joins_give_the_cut_nuclei_of_both_fields_their_own_cores(synthetic_dir: Path) -> None:
    """A joined window holds nuclei of two fields, and its targets are made again from the joined labels: each
    nucleus the seam cuts keeps a core of its own, as at an image's edge."""
    from nuclei.io.datasets import load_dataset
    from nuclei.training.fit import CropBatches, make_targets

    samples = load_dataset(synthetic_dir, progress=False).samples[:5]
    config = TrainConfig(data_dir="x", crop_size=64, batch_size=4, microscope=1.0, field_joins=1.0, contact_weight=5)
    batches = CropBatches(samples, config, train=True, steps=2)
    assert all(len(p) == 4 for p in batches.partners)  # every other field of the data set
    mixed = 0
    for index in range(5):
        raw, target, labels = batches._raw_window(index, 96)
        assert raw.shape[:2] == labels.shape == target.shape[:2] == (96, 96)
        np.testing.assert_array_equal(target, make_targets(labels, config.channels, config.contact_weight))
        ids = np.unique(labels)[1:]
        assert np.isin(ids, np.unique(labels[target[..., 1] > 0.5])).all()  # every nucleus has its core
        mixed += int(ids.max(initial=0) > samples[index].labels.max())  # the other field's ids follow this one's
    assert mixed >= 3
    plain = CropBatches(samples, config.model_copy(update={"field_joins": 0.0}), train=True, steps=1)
    raw, target, labels = plain._raw_window(0, 96)
    assert labels.max() <= samples[0].labels.max()
    assert batches[0][0].shape == (4, 64, 64, 3)
