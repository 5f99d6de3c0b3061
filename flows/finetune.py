"""The `finetune` flow: a shipped model fine-tuned on a lab's labelled images within a time budget, compared
with the model it started from on held-back images (`nuclei.training.finetune` does the work).

    nuclei finetune corrected/ --name lab-unet --minutes 15
    prefect deployment run finetune/lab --param data_dir=/data/corrected --param name=lab-unet
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows.parameters import config_parameters
from nuclei.config import FinetuneConfig
from nuclei.training.finetune import Progress
from nuclei.training.finetune import finetune as finetune_model
from nuclei.training.progress import Epochs


@flow(name="finetune", log_prints=True)
@config_parameters(FinetuneConfig)
def finetune(**settings: Any) -> str:
    """Fine-tune on labelled folders and publish a model directory; returns its path. The parameters are the
    fields of `FinetuneConfig`."""
    config = FinetuneConfig(**settings)
    name = config.name
    epochs = Epochs()
    result = finetune_model(config, progress=_progress_artifact(name, epochs))
    text = f"# Model `{result.model_dir}`\n\nFine-tuned from `{result.base}` in {result.seconds / 60:.1f} min.\n"
    if result.comparison is not None:
        table = result.comparison.table(result.base.name, name)
        verdict = result.comparison.verdict(result.base.name, name)
        text += f"\nOn the {result.comparison.n_images} held-back image(s):\n\n{table}\n\n{verdict}\n"
    text += f"\n## Fitting\n\n{epochs.markdown()}\n"
    create_markdown_artifact(key="finetune-comparison", markdown=text, description=f"{name} vs {result.base.name}")
    get_run_logger().info("model directory: %s", result.model_dir)
    return str(result.model_dir)


# How far the fine-tune is when each stage begins; fitting moves the bar from its start to "exporting" by time.
STAGE_SHARES = {"fitting": 0.02, "exporting": 0.75, "comparing": 0.9, "publishing": 0.98}


def _progress_artifact(name: str, epochs: Epochs) -> Progress:
    """A progress artifact that follows the fine-tune's stages and epochs (val loss, best so far), as the
    terminal's bar and the napari plugin do; ``epochs`` collects the epochs for the table after."""
    artifact = cast(UUID, create_progress_artifact(0.0, key="finetune-progress", description=f"{name}: loading"))

    def progress(stage: str, figures: dict[str, float]) -> None:
        epochs.take(figures)
        start = STAGE_SHARES.get(stage, 0.0)
        share = start + (STAGE_SHARES["exporting"] - start) * epochs.fraction() if stage == "fitting" else start
        said = epochs.line() if stage == "fitting" and epochs.figures else f"{stage}..."
        update_progress_artifact(artifact, 100 * share, description=f"{name}: {said}")

    return progress
