"""The `finetune` flow: a shipped model fine-tuned on a lab's labelled images within a time budget, compared
with the model it started from on held-back images (`nuclei.training.finetune` does the work).

    nuclei finetune corrected/ --name lab-unet --minutes 15
    prefect deployment run finetune/lab --param data_dir=/data/corrected --param name=lab-unet
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from nuclei.training.finetune import finetune as finetune_model


@flow(name="finetune", log_prints=True)
def finetune(
    data_dir: str | list[str],
    name: str,
    out_dir: str = "models",
    minutes: float = 15.0,
    base: str | None = None,
    held_back: float = 0.3,
    seed: int = 12345,
) -> str:
    """Fine-tune on labelled folders and publish a model directory; returns its path."""
    result = finetune_model(data_dir, name, out=out_dir, minutes=minutes, base=base, held_back=held_back,
                            seed=seed)
    text = f"# Model `{result.model_dir}`\n\nFine-tuned from `{result.base}` in {result.seconds / 60:.1f} min.\n"
    if result.comparison is not None:
        table = result.comparison.table(result.base.name, name)
        verdict = result.comparison.verdict(result.base.name, name)
        text += f"\nOn the {result.comparison.n_images} held-back image(s):\n\n{table}\n\n{verdict}\n"
    create_markdown_artifact(key="finetune-comparison", markdown=text, description=f"{name} vs {result.base.name}")
    get_run_logger().info("model directory: %s", result.model_dir)
    return str(result.model_dir)
