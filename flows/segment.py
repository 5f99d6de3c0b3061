"""The `segment` flow: discover images -> skip what the store has -> fan out Dask tasks -> summarize.

    nuclei segment images/ --model models/dsb2018-unet --store results.zarr
    prefect deployment run segment/watch-folder

The flow only wires steps; Dask tasks run `nuclei.inference.worker.segment_batch` and never talk to Prefect, so an
embedded run starts exactly one temporary Prefect server (the flow's).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from nuclei.config import DEFAULT_MAX_PIXELS, DEFAULT_PROVIDERS, DEFAULT_TILE_SIZE, SegmentConfig
from nuclei.inference import run as batch


@flow(name="segment", log_prints=True)
def segment(
    inputs: list[str],
    store: str,
    model: str | None = None,
    dask_address: str | None = None,
    n_workers: int | None = None,
    images_per_task: int = 32,
    overwrite: bool = False,
    tile_size: int = DEFAULT_TILE_SIZE,
    providers: list[str] = list(DEFAULT_PROVIDERS),  # noqa: B006 - Prefect parameters are copied
    int8: bool = True,
    diameter: float | None = None,
    threads: int = 0,
    batch_size: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> dict:
    """Segment every image of ``inputs`` into ``store``; returns the run summary. The parameters are the fields
    of `SegmentConfig` (a test keeps the two identical), plus ``progress``."""
    logger = get_run_logger()
    config = SegmentConfig(**{k: v for k, v in locals().items() if k in SegmentConfig.model_fields})
    plan = task(name="plan", cache_policy=NO_CACHE)(batch.plan)(config)
    logger.info("%d images: %d to segment in %d tasks, %d unchanged, %d unusable",
                plan.n_found, len(plan.items), len(plan.batches), len(plan.unchanged), len(plan.problems))
    results = task(name="run on dask", cache_policy=NO_CACHE)(batch.run)(plan, progress)
    summary = batch.summarize(plan, results)
    create_markdown_artifact(key="segment-summary", markdown=batch.summary_markdown(summary),
                             description=f"segmentation into {store}")
    logger.info(batch.summary_text(summary))
    return summary
