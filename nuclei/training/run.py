"""Training as a library call, as `nuclei.segment()` is for segmentation: one stage or several chained stages
(each from the previous stage's weights), no Prefect needed. The `train` flow wires the same steps as tasks.

    from nuclei.training.run import train
    model_dir = train({"data_dir": "data/stage1_train", "name": "lab-unet", "epochs": 40})
    model_dir = train(params, then=[{"crop_size": 192, "learning_rate": 3e-4}])   # a second stage
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from nuclei.config import TrainConfig
from nuclei.errors import NucleiError
from nuclei.evaluation import format_table
from nuclei.modeldir import model_destination
from nuclei.training import steps

log = logging.getLogger(__name__)

# Parameters whose None is a value (not "the config's default").
NULLABLE = ("init_from", "steps_per_epoch", "max_images", "encoder_weights", "minutes")


class TrainingFailed(NucleiError):
    """A run that trained but gave no usable model (it finds no nuclei): published, yet not a finished model."""


def make_config(params: dict[str, Any]) -> TrainConfig:
    """Parameters as a TrainConfig; None means the config's default where None is not a value. The model's
    name is checked first: one plain folder name under out_dir (`model_destination`)."""
    if isinstance(name := params.get("name"), str):  # before the config's pattern, to say what is wrong
        model_destination(params.get("out_dir") or TrainConfig.model_fields["out_dir"].default, name)
    config = TrainConfig(**{k: v for k, v in params.items() if v is not None or k in NULLABLE})
    model_destination(config.out_dir, config.name)
    return config


def plan_stages(params: dict[str, Any], then: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each stage's parameters: the first stage's, changed by `then` in turn; all but the last renamed NAME-stageK.
    Every stage is validated now, so a typo in a late stage fails before hours of training, not after."""
    stages = [dict(params)]
    for changes in then:
        stages.append({**stages[-1], **changes, "name": params["name"]})
    for number, stage in enumerate(stages[:-1], start=1):
        stage["name"] = f"{params['name']}-stage{number}"
    for stage in stages:
        make_config({**stage, "init_from": None})
    return stages


def train_stage(config: TrainConfig, stop: threading.Event | None = None) -> Path:
    """load -> split -> fit -> export (+ parity) -> evaluate -> int8 -> publish; returns the model directory.
    Raises TrainingFailed (after publishing, so it can be looked at) when the model finds almost no nuclei, and
    Interrupted (nothing published, the partial directory removed) when ``stop`` was set."""
    dataset = steps.load(config)
    data = steps.split(dataset, config)
    log.info("%d training / %d validation images (%s layout)", len(data.train), len(data.val), dataset.layout)
    staging = steps.staging_dir(config)
    with steps.removed_on_failure(staging):
        steps.describe(config, dataset, data, staging)
        model = steps.train_model(config, data, staging)
        steps.stop_requested(stop)
        steps.export(model, config, staging)
        _, report, _ = steps.evaluate(staging, data)
        if config.quantize_int8:
            steps.quantize(staging, data, report)
        steps.stop_requested(stop)
        model_dir = steps.publish(staging, config)
    log.info("model directory: %s\n%s", model_dir, format_table(report))
    if problem := steps.quality_problem(report, config):
        raise TrainingFailed(f"{model_dir}: {problem}")
    return model_dir


def train(params: dict[str, Any], then: list[dict[str, Any]] | None = None,
          stop: threading.Event | None = None) -> Path:
    """Train one stage, or the stages `then` chains (each from the previous one's model directory); ``stop``
    (set by the caller's signal handler) ends it before anything more is published."""
    model_dir: Path | None = None
    for stage in plan_stages(params, then or []):
        config = make_config({**stage, "init_from": model_dir or stage.get("init_from")})
        model_dir = train_stage(config, stop)
    assert model_dir is not None
    return model_dir
