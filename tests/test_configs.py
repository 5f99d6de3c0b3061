"""Every option exists once: the configs' fields are the flows' parameters and the CLI's options."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from nuclei.config import FinetuneConfig, SegmentConfig, TrainConfig
from nuclei.core.normalize import Normalization

EXTRA_FLOW_PARAMETERS = {"segment": {"progress"}, "train": {"then"}, "finetune": set()}


def _flows() -> dict[str, Any]:
    import flows.finetune
    import flows.segment
    import flows.train

    return {"segment": flows.segment.segment, "train": flows.train.train, "finetune": flows.finetune.finetune}


def _flow_parameters(flow: Any) -> dict[str, Any]:
    return {name: p.default for name, p in inspect.signature(flow.fn).parameters.items()}


@pytest.mark.parametrize("flow_name,config", [("segment", SegmentConfig), ("train", TrainConfig),
                                              ("finetune", FinetuneConfig)])
def test_flow_parameters_are_the_config_fields_with_the_same_defaults(flow_name: str, config: Any) -> None:
    flow = _flows()[flow_name]
    parameters = _flow_parameters(flow)
    assert set(parameters) - EXTRA_FLOW_PARAMETERS[flow_name] == set(config.model_fields)
    for name, field in config.model_fields.items():
        if field.is_required():
            assert parameters[name] is inspect.Parameter.empty, name
            continue
        default = field.get_default(call_default_factory=True)
        flow_default = parameters[name]
        assert (list(default) if isinstance(default, tuple | list) else default) == (
            list(flow_default) if isinstance(flow_default, tuple | list) else flow_default), name


def _parsed(argv: list[str]) -> dict[str, Any]:
    from nuclei.cli.main import build_parser
    from nuclei.cli.options import given

    args = build_parser().parse_args(argv)
    config = {"train": TrainConfig, "finetune": FinetuneConfig}.get(argv[0], SegmentConfig)
    return given(args, config)


def test_every_segment_option_reaches_the_config() -> None:
    params = _parsed(["segment", "a/", "b.tif", "--store", "s.zarr", "--model", "m", "--stained-model", "none",
                      "--dask-address", "tcp://x:1",
                      "--workers", "2", "--images-per-task", "4", "--overwrite", "--tile-size", "512",
                      "--providers", "CPUExecutionProvider", "--float32", "--diameter", "60", "--threads", "1",
                      "--batch-size", "2", "--max-pixels", "1000", "--channel", "DAPI", "--z", "max",
                      "--pixel-size", "0.65", "--tta", "--min-diameter", "8", "--no-drop-debris",
                      "--slide-pixels", "1000000", "--block-size", "2048",
                      "--max-slide-pixels", "2000000000", "--max-compression", "1e6"])
    assert set(params) == set(SegmentConfig.model_fields)  # each field is reachable from the command line
    config = SegmentConfig(**params)
    assert config.inputs == ["a/", "b.tif"] and config.n_workers == 2 and config.int8 is False
    assert config.diameter == 60.0 and config.providers == ["CPUExecutionProvider"] and config.tta is True
    assert config.min_diameter == 8.0 and config.drop_debris is False


def test_every_train_option_reaches_the_config() -> None:
    params = _parsed(["train", "d1", "d2", "--out", "o", "--name", "n", "--architecture", "unet", "--depth", "3",
                      "--base-filters", "8", "--no-instance-channel", "--encoder-weights", "w.h5", "--init-from", "m",
                      "--contact-weight", "5", "--epochs", "2", "--batch-size", "4", "--steps-per-epoch", "3",
                      "--val-fraction", "0.3", "--seed", "1", "--patience", "2", "--learning-rate", "0.01",
                      "--crop-size", "64", "--no-augment", "--scale-range", "0.5", "2", "--normalization",
                      '{"low": 2, "high": 99}', "--held-out", "d1:id=^a", "--held-out", "d2:id=^b",
                      "--no-held-out-in-validation", "--balance-categories", "--dataset-weights", '{"d1": 2}',
                      "--max-images", "5", "--on-error", "skip", "--quantize-int8",
                      "--min-ap50", "0.1", "--nucleus-brightness", "0.3", "--precision", "mixed_bfloat16",
                      "--minutes", "5", "--stain-jitter", "0.1", "--microscope", "0.4", "--field-joins", "0.3",
                      "--include", "d1:category=^stain",
                      "--validation-zooms", "0.5", "--validation-zooms", "1"])
    assert set(params) == set(TrainConfig.model_fields)
    config = TrainConfig(**params)
    assert config.data_dir == ["d1", "d2"]
    assert config.scale_range == (0.5, 2.0) and config.held_out == ["d1:id=^a", "d2:id=^b"]
    assert config.normalization.low == 2 and config.augment is False and config.instance_channel is False
    assert config.dataset_weights == {"d1": 2.0} and config.held_out_in_validation is False
    assert config.nucleus_brightness == 0.3 and config.precision == "mixed_bfloat16" and config.minutes == 5
    assert config.stain_jitter == 0.1 and config.microscope == 0.4 and config.field_joins == 0.3
    assert config.include == ["d1:category=^stain"]
    assert config.validation_zooms == [0.5, 1.0]


def test_every_finetune_option_reaches_the_config() -> None:
    params = _parsed(["finetune", "d1", "--name", "lab", "--out-dir", "o", "--minutes", "5", "--base", "m",
                      "--held-back", "0.2", "--seed", "1"])
    assert set(params) == set(FinetuneConfig.model_fields)
    config = FinetuneConfig(**params)
    assert config.data_dir == ["d1"] and config.name == "lab"
    assert (config.out_dir, config.minutes, config.base, config.held_back, config.seed) == ("o", 5.0, "m", 0.2, 1)
    # the spellings from before the config keep working
    old = _parsed(["finetune", "d1", "--name", "lab", "--out", "o", "--hold-back", "0"])
    assert (old["out_dir"], old["held_back"]) == ("o", 0.0)


@pytest.mark.parametrize("flow_name,config", [("segment", SegmentConfig), ("train", TrainConfig),
                                              ("finetune", FinetuneConfig)])
def test_a_flows_schema_is_its_configs_fields(flow_name: str, config: Any) -> None:
    """Prefect's parameter schema (the UI's form, `--param NAME=VALUE`) names each field with its default,
    description and bounds, generated from the config (flows/parameters.py), plus the flow's own parameters."""
    from pydantic import TypeAdapter

    flow = _flows()[flow_name]
    schema = flow.parameters.model_dump()
    assert set(schema["properties"]) - EXTRA_FLOW_PARAMETERS[flow_name] == set(config.model_fields)
    assert set(schema["required"]) == {n for n, f in config.model_fields.items() if f.is_required()}
    for name, field in config.model_fields.items():
        prop = schema["properties"][name]
        assert prop.get("description") == (" ".join(field.description.split()) if field.description else None), name
        if not field.is_required():
            default = TypeAdapter(field.annotation).dump_python(field.get_default(call_default_factory=True),
                                                                mode="json")
            assert prop["default"] == default, name
    for own in EXTRA_FLOW_PARAMETERS[flow_name]:
        assert schema["properties"][own].get("description"), own  # from the flow's docstring


def test_a_finetune_flow_run_validates_its_parameters_into_the_config(
        monkeypatch: pytest.MonkeyPatch, prefect_harness: None, tmp_path: Any) -> None:
    """A real Prefect run with flat parameters, as a deployment passes them: Prefect casts them by the schema and
    they reach `finetune` as one FinetuneConfig; a wrong type is refused before the flow runs."""
    from types import SimpleNamespace

    from prefect.exceptions import ParameterTypeError

    import flows.finetune

    seen: list[FinetuneConfig] = []

    def fake(settings: FinetuneConfig, **kwargs: Any) -> Any:
        seen.append(settings)
        return SimpleNamespace(model_dir=tmp_path / settings.name, base=tmp_path / "base", seconds=1.0,
                               comparison=None)

    monkeypatch.setattr(flows.finetune, "finetune_model", fake)
    monkeypatch.setattr(flows.finetune, "_progress_artifact", lambda name, epochs: None)
    assert flows.finetune.finetune(data_dir="corrected", name="lab", minutes="5", seed="7") == str(tmp_path / "lab")
    assert seen == [FinetuneConfig(data_dir="corrected", name="lab", minutes=5.0, seed=7)]
    with pytest.raises(ParameterTypeError, match="seed"):
        flows.finetune.finetune(data_dir="corrected", name="lab", seed="seven")


def test_bad_values_are_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="images_per_task"):
        SegmentConfig(inputs=["a"], store="s", images_per_task=0)
    with pytest.raises(ValueError, match="diameter"):
        SegmentConfig(inputs=["a"], store="s", diameter=0.5)
    with pytest.raises(ValueError, match="dataset_weights"):
        TrainConfig(data_dir="d", dataset_weights={"d": 0.0})


@pytest.mark.parametrize("deployment,model", [("generalist", "nuclei-generalist"), ("stained", "nuclei-stained")])
def test_a_train_deployment_ends_in_its_shipped_models_config(deployment: str, model: str) -> None:
    """`prefect deployment run train/generalist` (or train/stained) names, stage by stage, how a shipped model was
    made: its last stage's config is the shipped config.json (paths aside)."""
    import json
    from pathlib import Path

    import yaml

    import flows.train

    root = Path(__file__).resolve().parents[1]
    spec = yaml.safe_load((root / "deployments" / "prefect.yaml").read_text())
    params = dict(next(d for d in spec["deployments"] if d["name"] == deployment)["parameters"])
    then = params.pop("then", None) or []
    stages = flows.train.plan_stages({**_flow_parameters(flows.train.train), **params}, then)
    planned = flows.train.make_config(stages[-1]).model_dump(mode="json")
    shipped = json.loads((root / "nuclei" / "assets" / "models" / model / "config.json").read_text())
    # the normalisation as the config reads it: fields added since (the local kind's) at their defaults
    shipped["normalization"] = Normalization(**shipped["normalization"]).model_dump(mode="json")
    paths = {"data_dir", "out_dir", "init_from"}
    # options added since the model was trained name the same recipe at their defaults (they were off then)
    defaults = TrainConfig(data_dir="x").model_dump(mode="json")
    later = {k for k in planned if k not in shipped and planned[k] == defaults[k]}
    differ = {k: (v, shipped.get(k)) for k, v in planned.items()
              if k not in paths | later and shipped.get(k) != v}
    assert not differ, differ
    if not then:  # one stage: it starts from the model the deployment names (a staged run, from its own stages)
        assert Path(shipped["init_from"]).name == Path(planned["init_from"]).name

    def names(data_dir: str | list[str]) -> list[str]:
        return [Path(d).name for d in ([data_dir] if isinstance(data_dir, str) else data_dir)]

    assert names(shipped["data_dir"]) == names(planned["data_dir"])


def test_evaluate_takes_segments_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """`nuclei evaluate` declares no segmentation option by hand: they are SegmentConfig's, with its defaults."""
    import nuclei.evaluation
    from nuclei.cli.main import main
    from nuclei.evaluation import Report

    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(nuclei.evaluation, "evaluate_against",
                        lambda truth, out, **kwargs: seen.append(kwargs) or (Report(), {}))
    monkeypatch.setattr(nuclei.evaluation, "format_table", lambda report: "")  # nothing was scored
    assert main(["evaluate", "truth", "--float32", "--tta", "--diameter", "30", "--stained-model", "none"]) == 0
    assert main(["evaluate", "truth"]) == 0
    given, defaults = seen
    assert (given["int8"], given["tta"], given["diameter"], given["stained_model"]) == (False, True, 30.0, "none")
    assert (defaults["int8"], defaults["tta"], defaults["diameter"], defaults["stained_model"]) == (
        True, False, None, "default")
