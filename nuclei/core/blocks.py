"""Whole slides as blocks: block geometry and the joining of nuclei cut by block borders, pure numpy.

A slide is cut into blocks whose cores tile it. Each block is predicted on a window (its core, a label margin,
and the receptive-field context around both) and labelled over its core plus the margin (its "reach"), so a
nucleus that crosses a core border is labelled whole by every block that meets it. Each block keeps the pixels
of its core only; the pieces of one nucleus in two cores are joined by matching the two blocks' labels where
their reaches overlap (IoU >= 0.5: the same nucleus seen twice), as dask-image and Cellpose's distributed mode
join theirs. Ids are then numbered 1..N over the slide.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from nuclei.core.tiling import round_up

MIN_IOU = 0.5  # two labellings of one nucleus overlap far above this; two touching nuclei far below


@dataclass(frozen=True)
class Box:
    """A rectangle of a slide, [y0, y1) x [x0, x1)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    def grown(self, by: int, height: int, width: int) -> Box:
        return Box(max(0, self.y0 - by), min(height, self.y1 + by), max(0, self.x0 - by), min(width, self.x1 + by))

    def within(self, outer: Box) -> tuple[slice, slice]:
        """This box as slices of an array that holds ``outer``."""
        return slice(self.y0 - outer.y0, self.y1 - outer.y0), slice(self.x0 - outer.x0, self.x1 - outer.x0)

    def intersection(self, other: Box) -> Box | None:
        box = Box(max(self.y0, other.y0), min(self.y1, other.y1), max(self.x0, other.x0), min(self.x1, other.x1))
        return box if box.y0 < box.y1 and box.x0 < box.x1 else None


@dataclass(frozen=True)
class Block:
    """One task's share of a slide: the core it writes, the reach it labels, the window it reads."""

    index: int
    row: int
    col: int
    core: Box
    reach: Box
    window: Box


def plan_blocks(height: int, width: int, size: int, margin: int, context: int, multiple: int) -> list[Block]:
    """Blocks of ``size`` (rounded up to ``multiple``, so every window starts on the network's grid as a
    whole-image run's tiles do) in raster order."""
    size = round_up(max(size, multiple), multiple)
    blocks: list[Block] = []
    for row, y0 in enumerate(range(0, height, size)):
        for col, x0 in enumerate(range(0, width, size)):
            core = Box(y0, min(height, y0 + size), x0, min(width, x0 + size))
            reach = core.grown(margin, height, width)
            blocks.append(Block(len(blocks), row, col, core, reach, reach.grown(context, height, width)))
    return blocks


def neighbour_pairs(blocks: Sequence[Block]) -> list[tuple[int, int]]:
    """(a, b) with a < b for every two blocks whose cores touch, corners included (a nucleus at a corner
    meets four cores)."""
    at = {(b.row, b.col): b.index for b in blocks}
    pairs = []
    for block in blocks:
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            other = at.get((block.row + dr, block.col + dc))
            if other is not None:
                pairs.append((block.index, other))
    return pairs


def core_ids(labels: NDArray[np.integer], block: Block) -> NDArray[np.int64]:
    """The block's own ids that have pixels in its core (``labels`` covers the block's reach)."""
    ids = np.unique(labels[block.core.within(block.reach)])
    return ids[ids > 0].astype(np.int64)


def match(labels_a: NDArray[np.integer], block_a: Block, labels_b: NDArray[np.integer], block_b: Block,
          min_iou: float = MIN_IOU) -> NDArray[np.int64]:
    """(id in a, id in b) rows for the nuclei both blocks labelled alike where their reaches overlap."""
    shared = block_a.reach.intersection(block_b.reach)
    if shared is None:
        return np.zeros((0, 2), np.int64)
    a = labels_a[shared.within(block_a.reach)].ravel().astype(np.int64)
    b = labels_b[shared.within(block_b.reach)].ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    span = int(b.max()) + 1
    codes, overlap = np.unique(a[both] * span + b[both], return_counts=True)  # one int per (a, b) pair: fast
    pairs = np.stack([codes // span, codes % span], axis=1)
    area_a = np.bincount(a, minlength=int(a.max()) + 1)[pairs[:, 0]]
    area_b = np.bincount(b, minlength=int(b.max()) + 1)[pairs[:, 1]]
    iou = overlap / (area_a + area_b - overlap)
    return pairs[iou >= min_iou]


def number(core_id_lists: Sequence[NDArray[np.int64]], matches: dict[tuple[int, int], NDArray[np.int64]]
           ) -> list[NDArray[np.uint32]]:
    """Slide ids 1..N: a lookup table per block (its label -> slide id, 0 for labels with no core pixels),
    pieces matched across blocks sharing one id, numbered in block order."""
    sizes = [int(ids.max(initial=0)) + 1 for ids in core_id_lists]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    present = np.zeros(int(offsets[-1]), bool)
    for block, ids in enumerate(core_id_lists):
        present[offsets[block] + ids] = True
    edges = []
    for (a, b), rows in matches.items():
        rows = rows[(rows[:, 0] < sizes[a]) & (rows[:, 1] < sizes[b])]  # ids past a block's last core id: not written
        edges.append(np.stack([offsets[a] + rows[:, 0], offsets[b] + rows[:, 1]], axis=1))
    edge = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    edge = edge[present[edge[:, 0]] & present[edge[:, 1]]]  # only pieces that are written join
    from scipy.sparse import coo_matrix  # slides only: 6 ms of every small run's start-up otherwise
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(edge)), (edge[:, 0], edge[:, 1])), shape=(present.size, present.size))
    _, component = connected_components(graph, directed=False)
    # Number the components that hold a written piece, in the order of their first piece.
    first = np.unique(component[present], return_index=True)
    order = first[0][np.argsort(first[1])]
    slide_id = np.zeros(int(component.max(initial=0)) + 1, np.uint32)
    slide_id[order] = np.arange(1, order.size + 1, dtype=np.uint32)
    lut = np.where(present, slide_id[component], 0).astype(np.uint32)
    return [lut[offsets[i]:offsets[i + 1]] for i in range(len(core_id_lists))]


def owned(bbox_min_y: NDArray[np.floating], bbox_min_x: NDArray[np.floating], block: Block) -> NDArray[np.bool_]:
    """Which nuclei (by their bounding box's first corner, in slide coordinates) this block measures: every
    nucleus's corner lies in exactly one core."""
    core = block.core
    return (bbox_min_y >= core.y0) & (bbox_min_y < core.y1) & (bbox_min_x >= core.x0) & (bbox_min_x < core.x1)


def touches_inner_edge(labels: NDArray[np.integer], region: Box, height: int, width: int) -> NDArray[np.int64]:
    """Ids on an edge of ``region`` that is not the slide's edge: nuclei larger than the margin, cut there."""
    edges = []
    if region.y0 > 0:
        edges.append(labels[0])
    if region.y1 < height:
        edges.append(labels[-1])
    if region.x0 > 0:
        edges.append(labels[:, 0])
    if region.x1 < width:
        edges.append(labels[:, -1])
    ids = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.int64)
    return ids[ids > 0].astype(np.int64)


_COORDINATE = re.compile(r"^(centroid|bbox)_.*?([yx])(_px|_um)?$")


def to_slide_coordinates(table: NDArray[np.float64], columns: Sequence[str], origin: Box,
                         pixel_size_um: float | None) -> NDArray[np.float64]:
    """Measurements of a region, in the slide's coordinates: centroids and bounding boxes moved by the region's
    origin (in micrometres too, where the pixel size is known)."""
    table = table.copy()
    for index, name in enumerate(columns):
        found = _COORDINATE.match(name)
        if not found:
            continue
        shift = float(origin.y0 if found.group(2) == "y" else origin.x0)
        table[:, index] += shift * (pixel_size_um or np.nan) if found.group(3) == "_um" else shift
    return table
