"""The `segment` flow: discover images -> skip what the store has -> fan out Dask tasks -> summarize.

    nuclei segment images/ --store results.zarr
    prefect deployment run segment/watch-folder

The flow only wires steps; Dask tasks run `nuclei.inference.worker.segment_batch` and never talk to Prefect, so an
embedded run starts exactly one temporary Prefect server (the flow's).
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect import State, flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from flows.parameters import config_parameters
from nuclei.config import SegmentConfig
from nuclei.core.text import markdown_code, markdown_text
from nuclei.inference import run as batch
from nuclei.store.record import Failure, RunSummary


@flow(name="segment", log_prints=True)
@config_parameters(SegmentConfig)
def segment(progress: bool = False, **settings: Any) -> dict:
    """Segment every image of ``inputs`` into ``store``; returns the run summary. The parameters are the fields
    of `SegmentConfig`, and:

    Args:
        progress: a progress bar on stderr (the CLI's; a deployment's run has the progress artifact)
    """
    logger = get_run_logger()
    config = SegmentConfig(**settings)
    plan = task(name="plan", cache_policy=NO_CACHE)(batch.plan)(config)
    logger.info("%d images: %d to segment in %d batches, %d unchanged, %d unusable",
                plan.n_found, len(plan.items), len(plan.batches), len(plan.unchanged), len(plan.problems))
    # The fan-out shows as a progress bar in the UI, updated as each batch finishes (no task per image).
    bar = cast(UUID, create_progress_artifact(0.0, key="segment-progress",
                                               description=f"images segmented into {config.store}"))
    results = task(name=f"segment {len(plan.items)} images in {len(plan.batches)} batches",
                   cache_policy=NO_CACHE)(batch.run)(plan, progress, _progress(bar))
    summary = batch.summarize(plan, results)
    create_markdown_artifact(key="segment-summary", markdown=summary_markdown(summary),
                             description=f"segmentation into {config.store}")
    # Prefect hands callers the state's data (the summary); the state's message counts it in the run's log.
    return final_state(summary)  # type: ignore[return-value]


def _progress(artifact_id: UUID) -> batch.OnBatch:
    def update(done: float, total: int) -> None:
        update_progress_artifact(artifact_id, 100.0 * done / max(1, total))

    return update


def summary_markdown(summary: RunSummary) -> str:
    """The run summary as the flow's Markdown artifact: a table of counts, then each failed, skipped or noted
    file with its reason, escaped (a backtick or raw HTML in a file name stays text)."""
    rows = "\n".join(f"| {k} | {markdown_text(str(summary[k]))} |" for k in
                     ("store", "model", "found", "done", "skipped", "failed", "nuclei", "seconds",
                      "images_per_second", "providers"))
    sections: dict[str, list[Failure]] = {"Failures": summary["failures"],
                                          "Skipped: failed before, unchanged since":
                                              summary.get("skipped_failed_before", []),
                                          "Notes": summary.get("notes", [])}
    listed = [f"## {heading}\n\n" + ("\n".join(f"- {markdown_code(f['file'])}: {markdown_text(f['reason'])}"
                                                 for f in files) or "none")
              for heading, files in sections.items()]
    return f"# Segmentation run\n\n| | |\n|---|---|\n{rows}\n\n" + "\n\n".join(listed) + "\n"


def final_state(summary: RunSummary) -> State:
    """Completed, or Completed named "Completed with failures" whose message counts them: the UI and the
    CLI's exit code say a run had failed images, and the run's result is still the summary."""
    if summary["failed"]:
        message = f"{summary['failed']} failed, {summary['done']} segmented, {summary['skipped']} skipped"
        return Completed(name="Completed with failures", message=message, data=summary)
    return Completed(message=f"{summary['done']} segmented, {summary['skipped']} skipped", data=summary)
