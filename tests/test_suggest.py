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
