"""Grouping of scan positions into groups of gridsize**2 neighbours."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ptychopinn.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Groups:
    """Pattern indices per group and positions relative to the group centre.

    A group holds ``P = K * C`` patterns: ``K`` network inputs of ``C = channels`` patterns
    each, input by input (the first C members are the first input's channels).

    Shapes
    ------
    indices : (G, P) int64, pattern index of each member
    centers_px : (G, 2) float64, (y, x) mean position of the group
    offsets_px : (G, P, 2) float64, member position minus the group centre
    """

    indices: np.ndarray
    centers_px: np.ndarray
    offsets_px: np.ndarray
    channels: int = 1

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    @property
    def inputs_per_group(self) -> int:
        """K: network inputs per group."""
        return int(self.indices.shape[1]) // self.channels


def training_groups(
    positions_px: np.ndarray,
    gridsize: int,
    overlap_grid: int = 1,
    overlap_stride: int = 1,
    n_groups: int | None = None,
    seed: int = 0,
    scan_index: np.ndarray | None = None,
) -> Groups:
    """Overlap groups of network inputs, each input ``gridsize**2`` neighbouring patterns.

    Each group is seeded at one pattern: its ``K = overlap_grid**2`` inputs are the positions
    nearest to a lattice around the seed, ``overlap_stride`` scan steps apart
    (:func:`group_positions`), and each input holds its position's ``C = gridsize**2``
    nearest neighbours as channels (upstream's groups; at gridsize 1 the position alone).
    With ``overlap_grid`` 1 a group is one input: what inference predicts.

    Shapes
    ------
    positions_px : (M, 2) float, (y, x); returns groups of P = K * C members
    """
    overlap = group_positions(
        positions_px, overlap_grid, n_groups, seed, scan_index, overlap_stride
    )
    if gridsize == 1:
        return overlap
    channel = group_positions(positions_px, gridsize, None, seed, scan_index)  # (M, C)
    indices = channel.indices[overlap.indices]  # (G, K, C)
    g = indices.shape[0]
    indices = indices.reshape(g, -1)
    pos = np.asarray(positions_px, dtype=np.float64)[indices]  # (G, P, 2)
    centers = pos.mean(axis=1)
    return Groups(
        indices=indices,
        centers_px=centers,
        offsets_px=pos - centers[:, None],
        channels=gridsize * gridsize,
    )


def group_positions(
    positions_px: np.ndarray,
    gridsize: int,
    n_groups: int | None = None,
    seed: int = 0,
    scan_index: np.ndarray | None = None,
    stride: int = 1,
) -> Groups:
    """Form groups of ``C = gridsize**2`` neighbouring positions.

    At gridsize 1 every pattern is its own group. At gridsize > 1 each group is
    seeded at one pattern and holds, on the same object (``scan_index``), ordered by
    position (row, then column):

    - at ``stride`` 1, the seed and its ``C - 1`` nearest neighbours;
    - at ``stride`` s > 1, the positions nearest to a gridsize x gridsize lattice
      centred on the seed, with s times the object's scan step (the median distance
      to the nearest neighbour) between lattice points, each position at most once
      per group. The members still overlap, but the group spans s times as much of
      the object, so the overlap constraint reaches farther per group.

    Parameters
    ----------
    positions_px : (M, 2) float, (y, x)
    gridsize : patches per group along one axis
    n_groups : number of groups; all patterns seed a group when None or >= M.
        A smaller number draws the seeds at random (``seed``) without replacement.
    seed : random seed for the choice of seeds
    scan_index : (M,) int object id per pattern, optional
    stride : spacing of the members in scan steps (1: nearest neighbours)

    Raises
    ------
    DataError
        When an object has fewer than C positions.
    """
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride: expected a positive integer, got {stride!r}")
    positions_px = np.asarray(positions_px, dtype=np.float64)
    m = positions_px.shape[0]
    c = gridsize * gridsize
    if scan_index is None:
        scan_index = np.zeros(m, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if n_groups is None or n_groups >= m:
        seeds = np.arange(m)
    else:
        seeds = np.sort(rng.choice(m, size=n_groups, replace=False))
    if c == 1:
        indices = seeds[:, None]
    else:
        indices = np.empty((len(seeds), c), dtype=np.int64)
        for obj_id in np.unique(scan_index):
            members = np.flatnonzero(scan_index == obj_id)
            if len(members) < c:
                raise DataError(
                    f"gridsize {gridsize} needs at least {c} positions per object; "
                    f"object {obj_id} has {len(members)}"
                )
            tree = cKDTree(positions_px[members])
            rows = np.flatnonzero(scan_index[seeds] == obj_id)
            if stride == 1:
                _, nearest = tree.query(positions_px[seeds[rows]], k=c)
            else:
                nearest = _lattice_members(tree, positions_px[seeds[rows]], gridsize, stride)
            indices[rows] = members[nearest]
        # order members by (row, column) so channel order is spatially consistent
        pos = positions_px[indices]  # (G, C, 2)
        order = np.lexsort((pos[..., 1], pos[..., 0]), axis=-1)
        indices = np.take_along_axis(indices, order, axis=1)
    pos = positions_px[indices]  # (G, C, 2)
    centers = pos.mean(axis=1)
    return Groups(
        indices=indices.astype(np.int64), centers_px=centers, offsets_px=pos - centers[:, None]
    )


def _lattice_members(tree: cKDTree, seeds_px: np.ndarray, gridsize: int, stride: int) -> np.ndarray:
    """(G, C) indices into the tree's points nearest to a lattice around each seed.

    The lattice spacing is ``stride`` scan steps; a point nearest to two lattice points
    goes to the first, the second takes its next-nearest unused point.
    """
    c = gridsize * gridsize
    step = float(np.median(tree.query(tree.data, k=2)[0][:, 1]))
    ticks = (np.arange(gridsize) - (gridsize - 1) / 2) * stride * step
    lattice = np.stack(np.meshgrid(ticks, ticks, indexing="ij"), axis=-1).reshape(c, 2)
    _, candidates = tree.query(seeds_px[:, None, :] + lattice, k=c)  # (G, C, C)
    members = candidates[:, :, 0].astype(np.int64)  # each lattice point's nearest position
    first = np.sort(members, axis=1)
    # only groups where two lattice points share a nearest position need the ranked choice
    for g in np.flatnonzero(np.any(first[:, 1:] == first[:, :-1], axis=1)):
        used: set[int] = set()
        for t, ranked in enumerate(candidates[g]):
            members[g, t] = next(int(i) for i in ranked if int(i) not in used)
            used.add(int(members[g, t]))
    return members
