"""`nuclei evaluate`: a model or a store scored against ground truth, with the report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from flows.segment import segment
from nuclei.cli.main import main
from nuclei.evaluation import evaluate_against


def test_model_on_its_validation_split_and_the_same_scores_from_a_store(
    trained_model: Path, synthetic_dir: Path, tmp_path: Path
) -> None:
    val_ids = json.loads((trained_model / "data.json").read_text())["val_ids"]
    report, paths = evaluate_against(synthetic_dir, tmp_path / "model", model=trained_model, split="validation",
                                     progress=False)
    assert sorted(s.id for s in report.images) == sorted(val_ids)
    assert {"per_image", "summary", "worst_images"} <= set(paths) and all(p.is_file() for p in paths.values())
    with open(paths["per_image"]) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(val_ids) and {"id", "category", "dsb_score", "ap50"} <= set(rows[0])

    # The store written by the segment flow with the same model gives the same scores.
    summary = segment(inputs=[str(synthetic_dir / "images")], store=str(tmp_path / "s.zarr"),
                      model=str(trained_model), n_workers=1)
    assert summary["failed"] == 0
    from_model, _ = evaluate_against(synthetic_dir, tmp_path / "m", model=trained_model, progress=False)
    from_store, _ = evaluate_against(synthetic_dir, tmp_path / "s", store=tmp_path / "s.zarr", progress=False)
    assert from_store.overall() == pytest.approx(from_model.overall())


def test_images_missing_from_the_store_count_as_empty(trained_model: Path, synthetic_dir: Path,
                                                      tmp_path: Path) -> None:
    images = sorted((synthetic_dir / "images").iterdir())
    segment(inputs=[str(images[0])], store=str(tmp_path / "s.zarr"), model=str(trained_model), n_workers=1)
    report, _ = evaluate_against(synthetic_dir, tmp_path / "r", store=tmp_path / "s.zarr", progress=False)
    scores = {s.id: s.scores for s in report.images}
    assert len(scores) == len(images)
    assert all(scores[p.stem].as_dict()["n_pred"] == 0 for p in images[1:])


def test_cli_prints_the_table_and_fails_clearly(trained_model: Path, synthetic_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(synthetic_dir), "--model", str(trained_model), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "overall" in out and "dsb_score" in out and "worst_images" in out
    assert main(["evaluate", str(tmp_path / "nowhere"), "--model", str(trained_model)]) == 2
