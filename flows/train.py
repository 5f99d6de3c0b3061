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
from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

from flows.parameters import config_parameters
from nuclei.config import TrainConfig
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


@flow(name="train", log_prints=True)
@config_parameters(TrainConfig)
def train(then: list[dict[str, Any]] | None = None, **settings: Any) -> str:
    """Train a U-Net on a labelled dataset and write a self-describing model directory; returns its path. The
    parameters are the fields of `TrainConfig`, and:

    Args:
        then: fine-tuning stages in the same run, each a dict of parameters changed from the stage before
    """
    params = dict(settings)
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
