"""Reliability round 3 (issue 28): each hostile case ends correct or as a named one-line failure with a non-zero
exit. Small synthetic images and the shipped default model: seconds per test."""

from __future__ import annotations

from pathlib import Path

import pytest

import nuclei
from nuclei.errors import InputError
from nuclei.io.images import write_png
from nuclei.io.synthetic import make_sample


def _image(path: Path, seed: int = 1, shape: tuple[int, int] = (64, 64)) -> Path:
    write_png(path, make_sample(shape, n_nuclei=4, seed=seed)[0])
    return path


# --- 2: evaluate scores the entry made from the truth image, never a namesake --------------------------------


def test_evaluate_scores_the_entry_made_from_the_same_file_not_a_namesake(tmp_path: Path) -> None:
    from nuclei.evaluation import evaluate_against

    image, labels = make_sample((96, 96), n_nuclei=6, seed=7)
    write_png(tmp_path / "in" / "p1" / "x.png", make_sample((96, 96), n_nuclei=6, seed=8)[0])  # another plate
    write_png(tmp_path / "in" / "p2" / "x.png", image)
    write_png(tmp_path / "truth" / "images" / "x.png", image)
    write_png(tmp_path / "truth" / "labels" / "x.png", labels)
    nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr")
    report, _ = evaluate_against(tmp_path / "truth", tmp_path / "r", store=tmp_path / "s.zarr", progress=False)
    assert report.overall()["ap50"] > 0.5  # p1/x, the namesake, scored 0.000 before
    # Truth content in neither entry: two namesakes are an error naming both, not a guess.
    write_png(tmp_path / "truth" / "images" / "x.png", make_sample((96, 96), n_nuclei=6, seed=9)[0])
    with pytest.raises(InputError, match=r"2 entries named 'x' \(p1/x, p2/x\)"):
        evaluate_against(tmp_path / "truth", tmp_path / "r", store=tmp_path / "s.zarr", progress=False)


# --- 3: a file's own pixel size wins over --pixel-size; the conflict is reported -------------------------------


def test_a_files_own_pixel_size_wins_over_the_option_and_the_conflict_is_reported(tmp_path: Path) -> None:
    import tifffile

    grey = make_sample((64, 64), n_nuclei=4, seed=3)[0][..., 1]
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "ome.ome.tif", grey, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    _image(tmp_path / "in" / "plain.png")
    summary = nuclei.segment([tmp_path / "in"], tmp_path / "s.zarr", pixel_size=0.25)
    store = nuclei.open_store(tmp_path / "s.zarr")
    sizes = {i: store.metadata(i)["pixel_size_um"] for i in ("ome.ome", "plain")}
    assert sizes == {"ome.ome": 0.5, "plain": 0.25}
    assert [Path(n["file"]).name for n in summary["notes"]] == ["ome.ome.tif"]
    assert "not --pixel-size 0.25" in summary["notes"][0]["reason"]
