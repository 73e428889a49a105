"""Stitching: patches at their positions onto one object canvas.

The canvas lives on the object pixel grid of the positions: canvas pixel
``(r, c)`` is object pixel ``(r + origin_px[0], c + origin_px[1])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ptychopinn.physics.functional import scatter_patches


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


__all__ = ["CanvasGeometry", "Stitcher", "stitch"]
