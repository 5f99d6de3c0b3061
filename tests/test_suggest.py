"""A batch to label, spread over a folder's kinds of image (`nuclei.inference.suggest.pick`), from real rankings."""

from __future__ import annotations

from nuclei.inference.suggest import Candidate, pick


def _candidate(name: str, disagreement: float, diameter: float, n_nuclei: int, pixels: int) -> Candidate:
    return Candidate(id=name, source=f"{name}.png", flip_disagreement=disagreement, confidence=0.9,
                     n_nuclei=n_nuclei, diameter=diameter, pixels=pixels)


def _folder() -> list[Candidate]:
    """Ranked least sure first: four 63x cytospins (big nuclei, few) on top, then 20x fields and small tiles."""
    cytospins = [_candidate(f"cyto{i}", 0.40 - i / 100, 100.0 + i, 12 + i, 1_300_000) for i in range(4)]
    fields = [_candidate(f"field{i}", 0.20 - i / 100, 25.0 + i / 2, 150 + 5 * i, 360_000) for i in range(6)]
    tiles = [_candidate(f"tile{i}", 0.10 - i / 100, 12.0 + i / 3, 30 + i, 65_536) for i in range(6)]
    return sorted([*cytospins, *fields, *tiles], key=lambda c: -c.flip_disagreement)


def test_a_batch_takes_the_least_sure_of_each_kind_not_four_of_one() -> None:
    ranked = _folder()
    batch = pick(ranked, 3)[:3]
    assert [c.id for c in batch] == ["cyto0", "field0", "tile0"]  # each kind's least sure, most unsure first
    assert [c.id for c in ranked[:3]] == ["cyto0", "cyto1", "cyto2"]  # what the bare ranking would have given


def test_the_batch_is_still_every_image_once() -> None:
    ranked = _folder()
    for n in (0, 1, 2, 5, len(ranked), len(ranked) + 3):
        picked = pick(ranked, n)
        assert sorted(c.id for c in picked) == sorted(c.id for c in ranked)
    assert pick(ranked, 1) == ranked  # one image: the least sure
    assert pick(ranked, 5, seed=1)[:5] == pick(ranked, 5, seed=1)[:5]  # seeded: the same batch twice


def test_a_proportional_batch_gives_each_kind_places_as_it_is_a_share_of_the_folder() -> None:
    """Ten 20x fields, four cytospins, two tiles: the fields are most of the folder, so most of a batch of 4."""
    ranked = _folder()
    fields = [_candidate(f"more{i}", 0.15 - i / 1000, 25.5 + i / 3, 160 + 5 * i, 360_000) for i in range(4)]
    ranked = sorted([c for c in ranked if not c.id.startswith("tile") or c.id in ("tile0", "tile1")] + fields,
                    key=lambda c: -c.flip_disagreement)
    batch = pick(ranked, 4, proportional=True)[:4]
    kinds = [c.id.rstrip("0123456789") for c in batch]
    assert kinds.count("field") + kinds.count("more") >= 2, kinds  # 10 of 16: 2.5 places
    assert kinds.count("cyto") == 1, kinds  # its least sure only (4 of 16: 1 place), not the top four
    assert sorted(c.id for c in pick(ranked, 4, proportional=True)) == sorted(c.id for c in ranked)


def test_shares_split_places_by_size_and_never_beyond_a_kind() -> None:
    import numpy as np

    from nuclei.inference.suggest import shares

    assert shares(np.array([90, 33, 10]), 5).tolist() == [4, 1, 0]  # 3.38, 1.24, 0.38: the largest remainders
    assert shares(np.array([50, 30, 20]), 5).tolist() == [3, 1, 1]
    assert shares(np.array([1, 0, 20]), 5).tolist() == [0, 0, 5]
    assert shares(np.array([1, 1]), 5).tolist() == [1, 1]  # fewer images than places: every one
    assert shares(np.array([0, 0]), 3).tolist() == [0, 0]
