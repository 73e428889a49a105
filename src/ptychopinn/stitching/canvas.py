"""Stitching: patches at their positions onto one object canvas.

The canvas lives on the object pixel grid of the positions: canvas pixel
``(r, c)`` is object pixel ``(r + origin_px[0], c + origin_px[1])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ptychopinn.physics.functional import SHIFT_MARGIN_PX, scatter_patches
from ptychopinn.resources import check_allocation
from ptychopinn.stitching.phase_sync import synchronize_phases

#: Patches scattered onto the canvas per call of :meth:`Stitcher.add` in ``add_synchronized``.
_ADD_BATCH = 1024
#: A patch touches the canvas when the canvas weight under it is at least this fraction of
#: its own (sum of w * canvas weight >= ANCHOR_FRACTION * sum of w**2).
ANCHOR_FRACTION = 0.25


@dataclass(frozen=True)
class CanvasGeometry:
    """Where a canvas sits on the object grid and how large it is."""

    origin_px: tuple[int, int]
    shape: tuple[int, int]

    @classmethod
    def covering(
        cls,
        positions_px: np.ndarray,
        n: int,
        bytes_per_px: float = 0.0,
        source: str = "",
        max_memory_gb: float | None = None,
    ) -> CanvasGeometry:
        """Smallest canvas holding every N x N patch at ``positions_px`` (M, 2) (y, x).

        With ``bytes_per_px`` the memory of the canvases to come is checked against the
        budget first (:func:`~ptychopinn.resources.check_allocation`): one glitched position
        far from the others would otherwise ask for a canvas of gigabytes.
        """
        nearest = np.round(np.asarray(positions_px, dtype=np.float64))
        lo = nearest.min(axis=0).astype(np.int64) - n // 2 - 1
        hi = nearest.max(axis=0).astype(np.int64) - n // 2 + n + 1
        shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        if bytes_per_px:
            check_allocation(
                bytes_per_px * shape[0] * shape[1],
                f"{source or 'the scan'}: a {shape[0]} x {shape[1]} px object canvas for the "
                "positions (a position far from the others?)",
                max_memory_gb,
            )
        return cls(origin_px=(int(lo[0]), int(lo[1])), shape=shape)


class Stitcher:
    """Accumulates weighted patches chunk by chunk (memory flat in the number of patterns).

    The canvas holds ``sum(w * patch)`` and ``sum(w)``; the current estimate of the object is
    their ratio. :meth:`add` places patches as they are; :meth:`add_synchronized` first
    aligns their arbitrary phases with each other and with the canvas so far.

    Parameters
    ----------
    geometry : the canvas on the object grid
    weights : (N, N) non-negative weight of each patch pixel (e.g. the object support, or
        the probe's amplitude on it)
    """

    def __init__(
        self, geometry: CanvasGeometry, weights: Tensor, device: torch.device | str = "cpu"
    ):
        self.geometry = geometry
        self.weights = weights.to(device=device, dtype=torch.float32)
        h, w = geometry.shape
        self._numerator = torch.zeros(1, h, w, dtype=torch.complex64, device=device)
        self._denominator = torch.zeros(1, h, w, dtype=torch.float32, device=device)
        self._origin = torch.tensor(geometry.origin_px, dtype=torch.float64, device=device)
        self._n_added = 0
        self._held: tuple[Tensor, np.ndarray] | None = None  # (patches, positions) held back

    @property
    def is_empty(self) -> bool:
        """True until a patch has been added."""
        return self._n_added == 0

    @property
    def n_held(self) -> int:
        """Patches :meth:`add_synchronized` holds back until they connect to the canvas."""
        return 0 if self._held is None else int(self._held[0].shape[0])

    def add(self, patches: Tensor, positions_px: Tensor) -> None:
        """Add patches (K, N, N) complex at object positions (K, 2) (y, x).

        Only the part of the canvas the patches reach is touched, so the temporaries
        scale with the patches' footprint, not with the canvas.
        """
        if patches.shape[0] == 0:
            return
        device = self._numerator.device
        n = patches.shape[-1]
        pos = positions_px.to(device=device, dtype=torch.float64) - self._origin  # (K, 2)
        nearest = torch.round(pos)
        h, w = self.geometry.shape
        # every pixel a patch's window (with its shift margin) can reach, within the canvas
        lo = (nearest.min(dim=0).values - n // 2 - SHIFT_MARGIN_PX).clamp_min(0)
        hi = nearest.max(dim=0).values - n // 2 + n + SHIFT_MARGIN_PX
        r0, c0 = int(lo[0]), int(lo[1])
        r1, c1 = min(int(hi[0]), h), min(int(hi[1]), w)
        local = (pos - torch.tensor([r0, c0], dtype=torch.float64, device=device))[None]
        shape = (r1 - r0, c1 - c0)
        weighted = (patches.to(device=device, dtype=torch.complex64) * self.weights)[None]
        self._numerator[:, r0:r1, c0:c1] += scatter_patches(weighted, local, shape)
        ones = self.weights.expand(patches.shape[0], -1, -1)[None].contiguous()
        self._denominator[:, r0:r1, c0:c1] += scatter_patches(ones, local, shape)
        self._n_added += int(patches.shape[0])

    def grown(self, geometry: CanvasGeometry) -> Stitcher:
        """A stitcher on ``geometry`` (which must contain this canvas) holding these sums."""
        (r0, c0), (h, w) = self.geometry.origin_px, self.geometry.shape
        dy, dx = r0 - geometry.origin_px[0], c0 - geometry.origin_px[1]
        if dy < 0 or dx < 0 or dy + h > geometry.shape[0] or dx + w > geometry.shape[1]:
            raise ValueError(f"{geometry} does not contain {self.geometry}")
        new = Stitcher(geometry, self.weights, device=self._numerator.device)
        new._numerator[:, dy : dy + h, dx : dx + w] = self._numerator
        new._denominator[:, dy : dy + h, dx : dx + w] = self._denominator
        new._n_added, new._held = self._n_added, self._held
        return new

    def add_synchronized(
        self,
        patches: Tensor,
        positions_px: np.ndarray,
        hold_unanchored: bool = False,
        **options: Any,
    ) -> None:
        """Synchronise the phases of patches and add them to the canvas.

        The patches are aligned among themselves and against the canvas accumulated so far
        (:func:`synchronize_phases` with the canvas as ``background``), so a scan can be
        stitched chunk by chunk. ``options`` go to :func:`synchronize_phases`; the phase work
        runs on the CPU.

        With ``hold_unanchored`` a patch that is not connected, through overlapping patches
        of this call, to the canvas (to the largest connected group while the canvas is
        empty) is held back and tried again with the next call, when its neighbours may have
        arrived: once added, a patch's phase is fixed. At most as many patches are held as
        this call brings; the longest held are added first. :meth:`result` adds what is
        still held.

        Shapes
        ------
        patches : (K, N, N) complex; positions_px : (K, 2) (y, x)
        """
        patches = patches.cpu()
        positions_px = np.asarray(positions_px, dtype=np.float64)
        n_new = int(patches.shape[0])
        if self._held is not None:
            patches = torch.cat([self._held[0], patches])
            positions_px = np.concatenate([self._held[1], positions_px])
            self._held = None
        if patches.shape[0] == 0:
            return
        commit = np.ones(patches.shape[0], dtype=bool)
        if hold_unanchored:
            commit = self._anchored(positions_px, patches.shape[-1])
            excess = int(np.count_nonzero(~commit)) - n_new
            if excess > 0:
                commit[np.flatnonzero(~commit)[:excess]] = True
            if not commit.all():
                self._held = (patches[~commit], positions_px[~commit])
            patches, positions_px = patches[commit], positions_px[commit]
        background = None
        if not self.is_empty:
            background = self.weighted_sum_at(positions_px, patches.shape[-1]).cpu()
        synced = synchronize_phases(
            patches, positions_px, self.weights.cpu(), background=background, **options
        )
        for start in range(0, synced.shape[0], _ADD_BATCH):
            self.add(
                synced[start : start + _ADD_BATCH],
                torch.from_numpy(positions_px[start : start + _ADD_BATCH]),
            )

    def _anchored(self, positions_px: np.ndarray, size: int) -> np.ndarray:
        """(K,) bool: patches connected to the canvas through overlapping patches.

        Patches count as connected when their frames lie less than ``size / 2`` apart (a
        large overlap, which fixes their relative phase well); a patch touches the canvas
        when the canvas weight under it is at least :data:`ANCHOR_FRACTION` of its own.
        """
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        from scipy.spatial import cKDTree

        k = positions_px.shape[0]
        pairs = cKDTree(np.round(positions_px)).query_pairs(size / 2, output_type="ndarray")
        rows, cols = pairs[:, 0], pairs[:, 1]
        if not self.is_empty:
            weights = self.weights.cpu()
            covered = (self.weight_at(positions_px, size).cpu() * weights).sum(dim=(-2, -1))
            touching = np.flatnonzero(
                covered.numpy() >= ANCHOR_FRACTION * float(weights.square().sum())
            )
            rows = np.concatenate([rows, touching])
            cols = np.concatenate([cols, np.full(touching.size, k)])
        graph = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(k + 1, k + 1))
        _, labels = connected_components(graph, directed=False)
        if not self.is_empty:
            return labels[:k] == labels[k]
        return labels[:k] == np.argmax(np.bincount(labels[:k]))

    def weighted_sum_at(self, positions_px: np.ndarray, size: int) -> Tensor:
        """The accumulated ``sum(w * patch)`` in the integer frame of each patch.

        Frame pixel ``(i, j)`` of a patch at ``p`` is canvas pixel
        ``round(p) - size // 2 + (i, j)`` (the frames :func:`synchronize_phases` compares
        patches in); pixels off the canvas are 0.

        Shapes
        ------
        positions_px : (K, 2) (y, x)
        returns (K, size, size) complex64, on the stitcher's device
        """
        return self._frames(self._numerator[0], positions_px, size)

    def weight_at(self, positions_px: np.ndarray, size: int) -> Tensor:
        """The accumulated ``sum(w)`` in the integer frame of each patch (K, size, size)."""
        return self._frames(self._denominator[0], positions_px, size)

    def _frames(self, canvas: Tensor, positions_px: np.ndarray, size: int) -> Tensor:
        start = np.round(np.asarray(positions_px, dtype=np.float64)).astype(np.int64)
        start = start - size // 2 - np.asarray(self.geometry.origin_px)  # (K, 2)
        ar = np.arange(size)
        rows = torch.from_numpy(start[:, 0, None] + ar).to(canvas.device)  # (K, S)
        cols = torch.from_numpy(start[:, 1, None] + ar).to(canvas.device)  # (K, S)
        h, w = self.geometry.shape
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        values = canvas[rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
        return values * inside  # (K, S, S)

    def result(
        self, min_weight: float = 1e-3, region: CanvasGeometry | None = None
    ) -> tuple[Tensor, Tensor]:
        """Weighted average (H, W) complex64 and summed weight (H, W); uncovered pixels are 0.

        ``region`` (on the object grid, within this canvas) limits both to that part of the
        canvas (the covered part of a canvas grown with a margin); the weight threshold stays
        relative to the whole canvas's largest weight. Patches still held by
        :meth:`add_synchronized` are synchronised and added first.
        """
        if self._held is not None:
            held, self._held = self._held, None
            self.add_synchronized(*held)
        den, num = self._denominator[0], self._numerator[0]
        top = den.max().clamp_min(1e-12)
        if region is not None:
            r0 = region.origin_px[0] - self.geometry.origin_px[0]
            c0 = region.origin_px[1] - self.geometry.origin_px[1]
            h, w = self.geometry.shape
            if r0 < 0 or c0 < 0 or r0 + region.shape[0] > h or c0 + region.shape[1] > w:
                raise ValueError(f"{region} is not within {self.geometry}")
            box = np.s_[r0 : r0 + region.shape[0], c0 : c0 + region.shape[1]]
            den, num = den[box], num[box]
        covered = den > min_weight * top
        obj = num / den.clamp_min(1e-30)  # covered pixels have den > 0
        obj[~covered] = 0
        return obj, den * covered


def stitch(
    patches: Tensor,
    positions_px: Tensor,
    weights: Tensor,
    geometry: CanvasGeometry | None = None,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor, CanvasGeometry]:
    """Stitch patches (K, N, N) at object positions (K, 2) into one canvas.

    Returns the object (H, W) complex64, the summed weight (H, W) and the geometry.

    >>> obj = torch.randn(40, 40, dtype=torch.complex64)
    >>> pos = torch.tensor([[y, x] for y in range(12, 29, 4) for x in range(12, 29, 4)], dtype=torch.float64)
    >>> from ptychopinn.physics.functional import extract_patches
    >>> patches = extract_patches(obj[None], pos[None], 16)[0]
    >>> canvas, weight, geo = stitch(patches, pos, torch.ones(16, 16))
    >>> r, c = geo.origin_px
    >>> h, w = geo.shape
    >>> bool(torch.allclose(canvas[weight > 0], obj[r:r + h, c:c + w][weight > 0], atol=1e-5))
    True
    """
    n = patches.shape[-1]
    if geometry is None:
        geometry = CanvasGeometry.covering(positions_px.cpu().numpy(), n)
    stitcher = Stitcher(geometry, weights, device=patches.device)
    for start in range(0, patches.shape[0], chunk):
        stitcher.add(patches[start : start + chunk], positions_px[start : start + chunk])
    obj, weight = stitcher.result()
    return obj, weight, geometry


__all__ = ["CanvasGeometry", "Stitcher", "hilbert_order", "stitch", "synchronize_phases"]


def hilbert_order(points_px: np.ndarray, cell_px: float | None = None) -> np.ndarray:
    """Indices that walk ``points_px`` along a Hilbert curve over square cells.

    Consecutive runs of the order are compact regions of the plane, so a scan processed in
    chunks of this order gives chunks that each overlap what came before along a short
    boundary. Points in one cell keep their given order.

    Parameters
    ----------
    points_px : (K, 2) (y, x)
    cell_px : cell side; default about one point per cell (sqrt of the bounding box area
        per point)

    Shapes
    ------
    returns (K,) int64, a permutation

    >>> grid = np.array([(y, x) for y in range(4) for x in range(4)], dtype=float)
    >>> order = hilbert_order(grid, 1.0)
    >>> steps = np.abs(np.diff(grid[order], axis=0)).sum(axis=1)
    >>> bool(np.all(steps == 1))  # every step goes to a neighbouring cell
    True
    """
    pts = np.asarray(points_px, dtype=np.float64)
    k = pts.shape[0]
    if k < 2:
        return np.arange(k, dtype=np.int64)
    lo = pts.min(axis=0)
    span = np.maximum(pts.max(axis=0) - lo, 1e-9)
    if cell_px is None:
        cell_px = max(float(np.sqrt(span[0] * span[1] / k)), float(span.max()) / 2**20, 1e-9)
    cells = np.floor((pts - lo) / cell_px).astype(np.int64)  # (K, 2)
    side = 1 << max(1, int(cells.max()).bit_length())
    x, y = cells[:, 1].copy(), cells[:, 0].copy()
    d = np.zeros(k, dtype=np.int64)
    s = side // 2
    while s > 0:  # the classic xy -> d conversion, vectorised
        rx = (x & s) > 0
        ry = (y & s) > 0
        d += s * s * ((3 * rx.astype(np.int64)) ^ ry.astype(np.int64))
        flip = ~ry & rx
        x = np.where(flip, side - 1 - x, x)
        y = np.where(flip, side - 1 - y, y)
        x, y = np.where(ry, x, y), np.where(ry, y, x)
        s //= 2
    return np.argsort(d, kind="stable").astype(np.int64)
