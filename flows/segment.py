"""The `segment` flow: discover images -> skip what the store has -> fan out Dask tasks -> summarize.

    nuclei segment images/ --model models/dsb2018-unet --store results.zarr
    prefect deployment run segment/watch-folder

The flow only wires steps; Dask tasks run `nuclei.segmentation.segment_batch` and never talk to Prefect, so an
embedded run starts exactly one temporary Prefect server (the flow's).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from nuclei import batch
from nuclei.config import DEFAULT_PROVIDERS


@flow(name="segment", log_prints=True)
def segment(
    inputs: list[str],
    store: str,
    model: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    images_per_task: int = 32,
    overwrite: bool = False,
    tile_size: int = 1024,
    providers: list[str] = list(DEFAULT_PROVIDERS),  # noqa: B006 - Prefect parameters are copied
    int8: bool = True,
    diameter: float | None = None,
    progress: bool = False,
) -> dict:
    """Segment every image of ``inputs`` into ``store``; returns the run summary."""
    logger = get_run_logger()
    plan = task(name="plan", cache_policy=NO_CACHE)(batch.plan)(
        inputs, store, model, images_per_task, overwrite, tile_size, tuple(providers), int8, diameter
    )
    logger.info("%d images: %d to segment in %d tasks, %d unchanged, %d unusable",
                plan.n_found, len(plan.items), len(plan.batches), len(plan.unchanged), len(plan.problems))
    results = task(name="run on dask", cache_policy=NO_CACHE)(batch.run)(plan, dask_address, n_workers, progress)
    summary = batch.summarize(plan, results)
    create_markdown_artifact(key="segment-summary", markdown=batch.summary_markdown(summary),
                             description=f"segmentation into {store}")
    logger.info(batch.summary_text(summary))
    return summary
