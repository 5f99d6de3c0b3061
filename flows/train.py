"""The `train` flow: load -> split -> fit -> export -> evaluate -> publish a model directory.

    nuclei train DATA_DIR --out models --epochs 100
    prefect deployment run train/dsb2018
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from nuclei import train_steps as steps
from nuclei.config import TrainConfig
from nuclei.evaluation import format_table

# Arrays stay in this process: no caching, no result persistence of big inputs.
load = task(steps.load, name="load", cache_policy=NO_CACHE)
split = task(steps.split, name="split", cache_policy=NO_CACHE)
describe = task(steps.describe, name="describe", cache_policy=NO_CACHE)
fit = task(steps.train_model, name="fit", cache_policy=NO_CACHE)
export = task(steps.export, name="export", cache_policy=NO_CACHE)
evaluate = task(steps.evaluate, name="evaluate", cache_policy=NO_CACHE)
quantize = task(steps.quantize, name="quantize int8", cache_policy=NO_CACHE)
publish = task(steps.publish, name="publish", cache_policy=NO_CACHE)


@flow(name="train", log_prints=True)
def train(
    data_dir: str,
    out_dir: str = "models",
    name: str = "unet",
    architecture: str = "unet",
    depth: int = 4,
    base_filters: int = 16,
    instance_channel: bool = True,
    init_from: str | None = None,
    epochs: int = 100,
    batch_size: int = 16,
    steps_per_epoch: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 12345,
    patience: int = 10,
    learning_rate: float = 1e-3,
    crop_size: int = 256,
    augment: bool = True,
    balance_categories: bool = False,
    max_images: int | None = None,
    on_error: str = "raise",
    quantize_int8: bool = False,
) -> str:
    """Train a U-Net on a labelled dataset and write a self-describing model directory; returns its path."""
    config = TrainConfig(**locals())  # validates every parameter up front
    logger = get_run_logger()
    dataset = load(config)
    data = split(dataset, config)
    logger.info("%d training / %d validation images (%s layout)", len(data.train), len(data.val), dataset.layout)
    staging = steps.staging_dir(config)
    describe(config, dataset, data, staging)
    model = fit(config, data, staging)
    max_diff = export(model, config, staging)
    thresholds, report = evaluate(staging, data.val)
    if config.quantize_int8:
        quantize(staging, data, report)
    model_dir = publish(staging, config)
    create_markdown_artifact(
        key="train-metrics",
        markdown=_summary(model_dir, report_table=format_table(report), max_diff=max_diff,
                          thresholds=thresholds.as_dict()),
        description=f"validation metrics of {model_dir}",
    )
    logger.info("model directory: %s\n%s", model_dir, format_table(report))
    return str(model_dir)


def _summary(model_dir: Path, report_table: str, max_diff: float, thresholds: dict[str, float]) -> str:
    return (
        f"# Model `{model_dir}`\n\nValidation split, ONNX model, thresholds {thresholds}:\n\n"
        f"```\n{report_table}\n```\n\nONNX vs Keras max abs difference: {max_diff:.2e}\n"
    )
