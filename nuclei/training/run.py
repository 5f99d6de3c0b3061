"""Training as a library call, as `nuclei.segment()` is for segmentation: one stage or several chained stages
(each from the previous stage's weights), no Prefect needed. The `train` flow wires the same steps as tasks.

    from nuclei.training.run import train
    model_dir = train({"data_dir": "data/stage1_train", "name": "lab-unet", "epochs": 40})
    model_dir = train(params, then=[{"crop_size": 192, "learning_rate": 3e-4}])   # a second stage
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from nuclei.config import TrainConfig
from nuclei.errors import NucleiError
from nuclei.evaluation import format_table
from nuclei.training import steps

log = logging.getLogger(__name__)

# Parameters whose None is a value (not "the config's default").
NULLABLE = ("init_from", "steps_per_epoch", "max_images", "encoder_weights", "minutes")


class TrainingFailed(NucleiError):
    """A run that trained but gave no usable model (it finds no nuclei): published, yet not a finished model."""


def make_config(params: dict[str, Any]) -> TrainConfig:
    """Parameters as a TrainConfig; None means the config's default where None is not a value."""
    return TrainConfig(**{k: v for k, v in params.items() if v is not None or k in NULLABLE})


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


def train_stage(config: TrainConfig) -> Path:
    """load -> split -> fit -> export (+ parity) -> evaluate -> int8 -> publish; returns the model directory.
    Raises TrainingFailed (after publishing, so it can be looked at) when the model finds almost no nuclei."""
    dataset = steps.load(config)
    data = steps.split(dataset, config)
    log.info("%d training / %d validation images (%s layout)", len(data.train), len(data.val), dataset.layout)
    staging = steps.staging_dir(config)
    steps.describe(config, dataset, data, staging)
    model = steps.train_model(config, data, staging)
    steps.export(model, config, staging)
    _, report, _ = steps.evaluate(staging, data)
    if config.quantize_int8:
        steps.quantize(staging, data, report)
    model_dir = steps.publish(staging, config)
    log.info("model directory: %s\n%s", model_dir, format_table(report))
    if problem := steps.quality_problem(report, config):
        raise TrainingFailed(f"{model_dir}: {problem}")
    return model_dir


def train(params: dict[str, Any], then: list[dict[str, Any]] | None = None) -> Path:
    """Train one stage, or the stages `then` chains (each from the previous one's model directory)."""
    model_dir: Path | None = None
    for stage in plan_stages(params, then or []):
        model_dir = train_stage(make_config({**stage, "init_from": model_dir or stage.get("init_from")}))
    assert model_dir is not None
    return model_dir
