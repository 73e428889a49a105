"""Stitching: patches at their positions onto one object canvas.

The canvas lives on the object pixel grid of the positions: canvas pixel
``(r, c)`` is object pixel ``(r + origin_px[0], c + origin_px[1])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ptychopinn.physics.functional import scatter_patches, shift


@dataclass(frozen=True)
class CanvasGeometry:
    """Where a canvas sits on the object grid and how large it is."""

    origin_px: tuple[int, int]
    shape: tuple[int, int]

    @classmethod
    def covering(cls, positions_px: np.ndarray, n: int) -> CanvasGeometry:
        """Smallest canvas holding every N x N patch at ``positions_px`` (M, 2) (y, x)."""
        nearest = np.round(np.asarray(positions_px, dtype=np.float64))
        lo = nearest.min(axis=0).astype(np.int64) - n // 2 - 1
        hi = nearest.max(axis=0).astype(np.int64) - n // 2 + n + 1
        return cls(
            origin_px=(int(lo[0]), int(lo[1])), shape=(int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        )


class Stitcher:
    """Accumulates weighted patches chunk by chunk (memory flat in the number of patterns).

    Parameters
    ----------
    geometry : the canvas on the object grid
    weights : (N, N) non-negative weight of each patch pixel (e.g. object support or
        probe intensity)
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

    def add(self, patches: Tensor, positions_px: Tensor) -> None:
        """Add patches (K, N, N) complex at object positions (K, 2) (y, x)."""
        device = self._numerator.device
        pos = (positions_px.to(device=device, dtype=torch.float64) - self._origin)[None]
        weighted = (patches.to(device=device, dtype=torch.complex64) * self.weights)[None]
        self._numerator += scatter_patches(weighted, pos, self.geometry.shape)
        w = self.weights.expand(patches.shape[0], -1, -1)[None].contiguous()
        self._denominator += scatter_patches(w, pos, self.geometry.shape)

    def result(self, min_weight: float = 1e-3) -> tuple[Tensor, Tensor]:
        """Weighted average (H, W) complex64 and summed weight (H, W); uncovered pixels are 0."""
        den = self._denominator[0]
        covered = den > min_weight * den.max().clamp_min(1e-12)
        obj = torch.where(covered, self._numerator[0] / torch.where(covered, den, 1.0), 0)
        return obj, torch.where(covered, den, 0.0)


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


__all__ = ["CanvasGeometry", "Stitcher", "stitch", "synchronize_phases"]


def _integer_frames(positions_px: np.ndarray, n: int) -> tuple[np.ndarray, CanvasGeometry]:
    geometry = CanvasGeometry.covering(positions_px, n)
    start = np.round(positions_px).astype(np.int64) - n // 2 - np.asarray(geometry.origin_px)
    return start, geometry


def _tree_phases(patches: Tensor, start: np.ndarray, weights: Tensor) -> Tensor:
    """Initial phase offsets (K,) from a minimum spanning tree of neighbouring patches.

    Each patch is rotated to agree with its parent on their overlap; offsets are
    accumulated from the root by pointer jumping (vectorised, log2(K) steps).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree
    from scipy.spatial import cKDTree

    k, n = patches.shape[0], patches.shape[-1]
    tree = cKDTree(start)
    dist, nbr = tree.query(start, k=min(9, k))
    rows = np.repeat(np.arange(k), dist.shape[1])
    cols = nbr.reshape(-1)
    d = dist.reshape(-1)
    keep = (rows != cols) & (d < n / 2)
    graph = coo_matrix((d[keep] + 1e-6, (rows[keep], cols[keep])), shape=(k, k))
    mst = minimum_spanning_tree(graph)
    mst = mst + mst.T
    parent = np.arange(k)
    centre = start.mean(axis=0)
    unassigned = np.ones(k, dtype=bool)
    while unassigned.any():  # one pass per connected component of the scan
        candidates = np.flatnonzero(unassigned)
        root = candidates[np.argmin(np.linalg.norm(start[candidates] - centre, axis=1))]
        order, pred = breadth_first_order(mst, root, directed=False)
        has_parent = pred[order] >= 0
        parent[order[has_parent]] = pred[order][has_parent]
        unassigned[order] = False
    # overlap of each patch with its parent, in the patch's own frame
    d_px = torch.from_numpy(start - start[parent])  # (K, 2): parent frame = own frame + d
    ar = torch.arange(n)
    r_par = ar[None, :, None] + d_px[:, 0, None, None]  # (K, N, 1)
    c_par = ar[None, None, :] + d_px[:, 1, None, None]  # (K, 1, N)
    valid = (r_par >= 0) & (r_par < n) & (c_par >= 0) & (c_par < n)  # (K, N, N)
    par_idx = torch.from_numpy(parent)[:, None, None]
    other = patches[par_idx, r_par.clamp(0, n - 1), c_par.clamp(0, n - 1)]  # (K, N, N)
    w_other = weights[r_par.clamp(0, n - 1), c_par.clamp(0, n - 1)]
    overlap = (patches.conj() * other * weights * w_other * valid).sum(dim=(-2, -1))  # (K,)
    relative = torch.where(torch.from_numpy(parent) == torch.arange(k), 0.0, torch.angle(overlap))
    accumulated = relative.clone().double()
    pointer = torch.from_numpy(parent)
    for _ in range(int(np.ceil(np.log2(max(k, 2)))) + 1):
        accumulated = accumulated + accumulated[pointer]
        pointer = pointer[pointer]
    return accumulated.float()


def synchronize_phases(
    patches: Tensor,
    positions_px: np.ndarray,
    weights: Tensor,
    n_iter: int = 20,
    tol_rad: float = 1e-4,
) -> Tensor:
    """Remove each patch's arbitrary global phase so overlapping patches agree.

    The far-field amplitude of a single pattern does not see a constant phase
    factor on its object patch, so a network's patches carry one arbitrary phase
    each; averaging them unsynchronised destroys the low spatial frequencies of
    the phase. Offsets are initialised along a spanning tree of neighbouring
    patches and polished by ``n_iter`` rounds of aligning each patch to the
    weighted sum of the others (integer-pixel overlaps suffice for the offsets), stopping
    early once no offset changes by more than ``tol_rad``.

    Shapes
    ------
    patches : (K, N, N) complex
    positions_px : (K, 2) (y, x)
    weights : (N, N)
    returns (K, N, N) complex, each patch times a unit phase factor
    """
    k, n = patches.shape[0], patches.shape[-1]
    if k < 2:
        return patches
    original = patches.to(torch.complex64)
    weights = weights.to(torch.float32)
    positions_px = np.asarray(positions_px, dtype=np.float64)
    start, geometry = _integer_frames(positions_px, n)
    # resample each patch onto the integer grid of its window so overlaps compare like with like
    residual = torch.from_numpy(positions_px - np.round(positions_px)).to(torch.float32)
    patches = shift(original, residual) if bool(torch.any(residual != 0)) else original
    phase = _tree_phases(patches, start, weights)
    h, w = geometry.shape
    ar = torch.arange(n)
    st = torch.from_numpy(start)
    flat = ((st[:, 0, None, None] + ar[:, None]) * w + st[:, 1, None, None] + ar[None, :]).reshape(
        -1
    )
    weighted = patches * weights  # (K, N, N)
    for _ in range(n_iter):
        rot = torch.polar(torch.ones_like(phase), phase)[:, None, None]
        canvas = torch.zeros(h * w, dtype=torch.complex64).index_add(
            0, flat, (weighted * rot).reshape(-1)
        )
        others = canvas[flat].reshape(k, n, n) - weighted * rot
        new = torch.angle((weighted.conj() * others).sum(dim=(-2, -1)))
        change = torch.angle(torch.polar(torch.ones_like(new), new - phase)).abs().max()
        phase = new
        if float(change) < tol_rad:
            break
    return original * torch.polar(torch.ones_like(phase), phase)[:, None, None]
