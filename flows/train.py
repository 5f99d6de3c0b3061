"""The `train` flow: load -> split -> fit -> export -> evaluate -> publish a model directory, each step a task
(`nuclei.training.run.train` runs the same steps without Prefect).

    nuclei train DATA_DIR --out models --epochs 100
    prefect deployment run train/dsb2018

`then` chains fine-tuning stages in the same run: each is the previous stage's parameters with some changes,
trained from the previous stage's weights. Earlier stages are published as NAME-stage1, NAME-stage2, ...; the
last one as NAME.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from nuclei.config import TrainConfig
from nuclei.core.normalize import Normalization
from nuclei.evaluation import format_table
from nuclei.training import steps
from nuclei.training.fit import OnEpoch
from nuclei.training.progress import Epochs
from nuclei.training.run import make_config, plan_stages

# Arrays stay in this process: no caching, no result persistence of big inputs.
load = task(name="load", cache_policy=NO_CACHE)(steps.load)
split = task(name="split", cache_policy=NO_CACHE)(steps.split)
describe = task(name="describe", cache_policy=NO_CACHE)(steps.describe)
fit = task(name="fit", cache_policy=NO_CACHE)(steps.train_model)
export = task(name="export", cache_policy=NO_CACHE)(steps.export)
evaluate = task(name="evaluate", cache_policy=NO_CACHE)(steps.evaluate)
quantize = task(name="quantize int8", cache_policy=NO_CACHE)(steps.quantize)
publish = task(name="publish", cache_policy=NO_CACHE)(steps.publish)


# The config's own types and defaults (Prefect builds the run form from them); a frozen model is a safe default.
FOREGROUND = TrainConfig.model_fields["normalization"].default


@flow(name="train", log_prints=True)
def train(
    data_dir: str | list[str],
    out_dir: str = "models",
    name: str = "unet",
    architecture: Literal["unet", "mobilenet_unet"] = "unet",
    depth: int = 4,
    base_filters: int = 16,
    instance_channel: bool = True,
    encoder_weights: str | None = None,
    init_from: str | None = None,
    contact_weight: float = 0.0,
    epochs: int = 100,
    batch_size: int = 16,
    steps_per_epoch: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 12345,
    patience: int = 10,
    precision: Literal["float32", "mixed_bfloat16"] = "float32",
    minutes: float | None = None,
    learning_rate: float = 1e-3,
    crop_size: int = 256,
    augment: bool = True,
    scale_range: tuple[float, float] = (1.0, 1.0),
    normalization: Normalization = FOREGROUND,
    nucleus_brightness: float = 0.5,
    stain_jitter: float = 0.0,
    microscope: float = 0.0,
    validation_zooms: list[float] | None = None,
    include: list[str] | None = None,
    held_out: list[str] | None = None,
    held_out_in_validation: bool = True,
    balance_categories: bool = False,
    dataset_weights: dict[str, float] | None = None,
    max_images: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    quantize_int8: bool = False,
    min_ap50: float = 0.05,
    then: list[dict[str, Any]] | None = None,
) -> str:
    """Train a U-Net on a labelled dataset and write a self-describing model directory; returns its path."""
    params = {k: v for k, v in locals().items() if k != "then"}
    if then:
        return _staged(params, then)
    config = make_config(params)  # validates every parameter up front
    logger = get_run_logger()
    dataset = load(config)
    data = split(dataset, config)
    logger.info("%d training / %d validation images (%s layout)", len(data.train), len(data.val), dataset.layout)
    staging = steps.staging_dir(config)
    describe(config, dataset, data, staging)
    fitted = Epochs()
    model = fit(config, data, staging, on_epoch=_fitting_artifacts(config, fitted))
    create_markdown_artifact(key="train-epochs", markdown=f"# Fitting `{config.name}`\n\n{fitted.markdown()}\n",
                             description=f"each epoch's losses while fitting {config.name}")
    max_diff = export(model, config, staging)
    thresholds, report, held_out_reports = evaluate(staging, data)
    if config.quantize_int8:
        quantize(staging, data, report)
    model_dir = publish(staging, config)
    create_markdown_artifact(
        key="train-metrics",
        markdown=_summary(model_dir, report_table=format_table(report), max_diff=max_diff,
                          thresholds=thresholds.as_dict(),
                          held_out={rule: format_table(r) for rule, r in held_out_reports.items()}),
        description=f"validation metrics of {model_dir}",
    )
    logger.info("model directory: %s\n%s", model_dir, format_table(report))
    problem = steps.quality_problem(report, config)
    if problem:  # a model that finds nothing must not look like a finished model
        logger.error("%s: %s", model_dir, problem)
        return Failed(message=f"{model_dir}: {problem}", data=str(model_dir))  # type: ignore[return-value]
    return str(model_dir)


def _fitting_artifacts(config: TrainConfig, seen: Epochs) -> OnEpoch:
    """A progress artifact that follows fitting (epochs, or the time budget) and describes the last epoch (val
    loss, best so far), as the terminal's bar does; ``seen`` keeps the epochs for the table after."""
    artifact = create_progress_artifact(0.0, key="train-fitting", description=f"fitting {config.name}: starting")

    def on_epoch(epochs: Epochs) -> None:
        seen.total, seen.budget_s, seen.figures = epochs.total, epochs.budget_s, list(epochs.figures)
        update_progress_artifact(cast(UUID, artifact), 100 * epochs.fraction(),
                                 description=f"fitting {config.name}: {epochs.line()}")

    return on_epoch


def _staged(params: dict[str, Any], then: list[dict[str, Any]]) -> str:
    """Run the stages one after the other as subflows, each from the previous one's model directory."""
    stages = plan_stages(params, then)
    model_dir = None
    for stage in stages:
        model_dir = train(**{**stage, "init_from": model_dir or stage["init_from"]})
    return str(model_dir)


def _summary(model_dir: Path, report_table: str, max_diff: float, thresholds: dict[str, float],
             held_out: dict[str, str]) -> str:
    text = (
        f"# Model `{model_dir}`\n\nValidation split, ONNX model, thresholds {thresholds}:\n\n"
        f"```\n{report_table}\n```\n\nONNX vs Keras max abs difference: {max_diff:.2e}\n"
    )
    for rule, table in held_out.items():
        text += f"\n## Held out of training: `{rule}`\n\n```\n{table}\n```\n"
    return text
