"""A segmentation run: plan the work, fan it out on Dask, and summarize what happened.

The flow wires these steps as Prefect tasks; the Python API and CLI call the flow.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import as_completed
from tqdm import tqdm

from nuclei.cluster import dask_client, task_resources
from nuclei.discovery import ImageItem, discover
from nuclei.errors import InputError
from nuclei.inference import Engine
from nuclei.modeldir import ModelDir, resolve_model
from nuclei.segmentation import ImageResult, SegmentSettings, segment_batch
from nuclei.store import Store

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """What a run will do: the settings every task gets, and the images grouped into tasks."""

    settings: SegmentSettings
    model_version: str
    n_found: int
    batches: list[list[ImageItem]]
    unchanged: list[str] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    images_per_task: int = 32

    @property
    def items(self) -> list[ImageItem]:
        return [item for batch in self.batches for item in batch]


def check_model(model: str | None, providers: Sequence[str], tile_size: int, int8: bool = True) -> ModelDir:
    """Load the model and build a session once here, so a bad model fails before any work is sent."""
    model_dir = resolve_model(model)
    engine = Engine(model_dir, tuple(providers), tile_size=tile_size, int8=int8)
    log.info("model %s (%s) on providers %s", model_dir.version, engine.precision, engine.session_providers())
    return model_dir


def _unchanged(item: ImageItem, record: dict[str, Any] | None, model_version: str) -> bool:
    """Same model, and the same file by size and modification time (the worker checks the hash)."""
    return bool(record and record.get("model", {}).get("version") == model_version
                and record.get("source") == item.url and record.get("source_size") == item.size
                and item.mtime is not None and record.get("source_mtime") == item.mtime)


def plan(
    inputs: Sequence[str], store: str, model: str | None = None, images_per_task: int = 32,
    overwrite: bool = False, tile_size: int = 1024, providers: Sequence[str] = ("CPUExecutionProvider",),
    int8: bool = True, diameter: float | None = None,
) -> Plan:
    """Validate parameters, discover images, leave out unchanged ones, and group the rest into tasks."""
    if images_per_task < 1:
        raise ValueError(f"images_per_task must be >= 1, got {images_per_task}")
    if diameter is not None and not 2.0 <= diameter <= 1000.0:
        raise ValueError(f"diameter must be a nucleus diameter in pixels (2-1000), got {diameter}")
    model_dir = check_model(model, providers, tile_size, int8)
    records = Store(store, mode="a").records()
    found = discover(inputs)
    todo, unchanged = [], []
    for item in found.items:
        if not overwrite and _unchanged(item, records.get(item.id), model_dir.version):
            unchanged.append(item.id)
        else:
            todo.append(item)
    settings = SegmentSettings(model=str(model_dir.path), store=store, providers=tuple(providers),
                               tile_size=tile_size, overwrite=overwrite, int8=int8, diameter=diameter)
    batches = [todo[i : i + images_per_task] for i in range(0, len(todo), images_per_task)]
    return Plan(settings, model_dir.version, len(found.items) + len(found.problems), batches, unchanged,
                found.problems, images_per_task=images_per_task)


def run(plan: Plan, dask_address: str | None = None, n_workers: int | None = None,
        progress: bool = False) -> list[ImageResult]:
    """Run every task on Dask; a task that fails as a whole marks its images failed with the reason."""
    if not plan.batches:
        return []
    results: list[ImageResult] = []
    with dask_client(dask_address, n_workers) as client:
        batches = balanced(plan.items, plan.images_per_task, len(client.scheduler_info(n_workers=-1)["workers"]))
        resources = task_resources(client)
        if resources:
            log.info("inference tasks request %s per task", resources)
        futures = client.map(segment_batch, batches, settings=plan.settings, pure=False, resources=resources)
        batch_of = {f.key: b for f, b in zip(futures, batches, strict=True)}
        with tqdm(total=len(plan.items), unit="img", desc="segmenting", disable=not progress) as bar:
            for future in as_completed(futures):
                results += _collect(future, batch_of[future.key])
                bar.update(len(batch_of[future.key]))
    return results


def balanced(items: list[ImageItem], images_per_task: int, n_workers: int) -> list[list[ImageItem]]:
    """Tasks of at most ``images_per_task`` images, but at least 8 per worker while there are enough images,
    so that no worker sits idle while another finishes a long last task."""
    size = max(1, min(images_per_task, math.ceil(len(items) / (8 * max(1, n_workers)))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _collect(future: Any, batch: list[ImageItem]) -> list[ImageResult]:
    try:
        return list(future.result())
    except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker after repeated worker deaths
        reason = f"task failed: {type(exc).__name__}: {exc}"
        return [ImageResult(item.id, item.url, "failed", reason) for item in batch]


def summarize(plan: Plan, results: Sequence[ImageResult]) -> dict[str, Any]:
    """Counts, failures with reasons, nuclei found and throughput of one run."""
    seconds = time.perf_counter() - plan.started
    status = Counter(r.status for r in results)
    failed = [{"file": str(p.path), "reason": p.reason} for p in plan.problems]
    failed += [{"file": r.url, "reason": r.reason} for r in results if r.status == "failed"]
    done = status["done"]
    return {
        "store": plan.settings.store,
        "model": plan.model_version,
        "found": plan.n_found,
        "done": done,
        "skipped": len(plan.unchanged) + status["skipped"],
        "failed": len(failed),
        "failures": failed,
        "nuclei": sum(r.n_nuclei for r in results),
        "seconds": round(seconds, 2),
        "images_per_second": round(done / seconds, 3) if seconds > 0 else 0.0,
        "providers": sorted({p for r in results for p in r.providers}),
    }


def summary_text(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['done']} segmented, {summary['skipped']} skipped (unchanged), {summary['failed']} failed "
        f"of {summary['found']} found; {summary['nuclei']} nuclei; {summary['images_per_second']} images/s "
        f"on {', '.join(summary['providers']) or '-'}; store {summary['store']}",
    ]
    lines += [f"  failed: {f['file']}: {f['reason']}" for f in summary["failures"]]
    return "\n".join(lines)


def summary_markdown(summary: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {summary[k]} |" for k in
                     ("store", "model", "found", "done", "skipped", "failed", "nuclei", "seconds",
                      "images_per_second", "providers"))
    failures = "\n".join(f"- `{f['file']}`: {f['reason']}" for f in summary["failures"]) or "none"
    return f"# Segmentation run\n\n| | |\n|---|---|\n{rows}\n\n## Failures\n\n{failures}\n"


def segment(inputs: Sequence[str] | str, store: str, model: str | None = None, **options: Any) -> dict[str, Any]:
    """Python API: run the `segment` flow (Prefect's embedded mode unless PREFECT_API_URL is set)."""
    from flows.segment import segment as segment_flow

    return segment_flow(inputs=[inputs] if isinstance(inputs, str) else list(inputs), store=store, model=model,
                        **options)
