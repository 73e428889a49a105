"""Scan-position correction: the positions as parameters of the likelihood, refined with the object.

Encoder positions of a real scan are off by a pixel or more, and a position error costs the
same likelihood as a wrong object. During refinement each position (sub-pixel, y x on the
object canvas) gets the gradient of its own pattern's negative log-likelihood through the
Fourier shift that places the object window under the probe, and a step of its own when its
pattern is in the batch: the gradient divided by the running RMS of that position's gradients
(RMSprop without momentum, per position and axis), so a step moves a position by about the
step size whatever the contrast of the object there. (Adam's momentum would keep moving a
position for the many steps in which its pattern is not in the batch.)
After each pass the corrections are constrained:

* the mean correction is removed (a common shift of every position is a shift of the
  object, which no pattern can tell apart);
* ``affine``: the corrections are replaced by the best affine map of the input positions
  (a stage's scale, rotation and shear errors, the model pty-chi and PtychoShelves offer);
  every position follows it, also those refinement does not move;
* each correction is capped at ``max_px`` per axis (a pattern whose likelihood is flat in
  its position, e.g. on a featureless region, must not wander off).
"""

from __future__ import annotations

from typing import Literal

import torch

Constraint = Literal["free", "affine"]

#: Decay of the running mean of each position's squared gradients (one update per pass).
BETA = 0.9


class PositionCorrector:
    """Sub-pixel corrections of scan positions, optimised alongside the object.

    Parameters
    ----------
    nominal : (K, 2) float (y, x) input positions on the canvas grid
    lr : step size (pixels)
    max_px : cap on each correction, per axis (pixels)
    constraint : ``free`` (every position its own) or ``affine`` (one affine map)
    movable : indices of the positions that define the common shift and the affine map
        (None: all); the others move only by their own steps (``free``) or follow the map
        (``affine``)
    """

    def __init__(
        self,
        nominal: torch.Tensor,
        lr: float,
        max_px: float,
        constraint: Constraint = "free",
        movable: torch.Tensor | None = None,
    ):
        if constraint not in ("free", "affine"):
            raise ValueError(
                f"position constraint: expected 'free' or 'affine', got {constraint!r}"
            )
        self.nominal = nominal.detach().clone()
        self.positions = torch.nn.Parameter(self.nominal.clone())
        self.mean_square = torch.zeros_like(self.nominal)  # running mean of squared gradients
        self.updates = torch.zeros(nominal.shape[0], 1, dtype=nominal.dtype, device=nominal.device)
        self.lr = lr
        self.max_px = max_px
        self.constraint = constraint
        k = nominal.shape[0]
        self.movable = movable if movable is not None else torch.arange(k, device=nominal.device)

    @torch.no_grad()
    def step(self, index: torch.Tensor, factor: float) -> None:
        """Step the positions ``index`` (whose gradients are in) by ``factor`` x the step size."""
        grad = self.positions.grad
        self.positions.grad = None
        if grad is None or factor == 0:
            return
        g = grad[index]
        ms = BETA * self.mean_square[index] + (1 - BETA) * g.square()
        self.mean_square[index] = ms
        self.updates[index] += 1
        unbiased = ms / (1 - BETA ** self.updates[index])
        moved = self.positions[index] - self.lr * factor * g / (unbiased.sqrt() + 1e-12)
        d = (moved - self.nominal[index]).clamp(-self.max_px, self.max_px)
        self.positions[index] = self.nominal[index] + d

    @torch.no_grad()
    def constrain(self) -> None:
        """Remove the common shift; fit the affine map (``affine``); cap the corrections."""
        d = self.positions - self.nominal
        if self.constraint == "affine":
            moved = d[self.movable] - d[self.movable].mean(dim=0)
            basis = _affine_basis(self.nominal)  # (K, 3)
            solution = torch.linalg.lstsq(basis[self.movable].double(), moved.double()).solution
            d = (basis.double() @ solution).to(d.dtype)
            d = d - d[self.movable].mean(dim=0)
        else:
            d = d - d[self.movable].mean(dim=0)
        self.positions.copy_(self.nominal + d.clamp(-self.max_px, self.max_px))

    def correction(self) -> torch.Tensor:
        """(K, 2) the corrections (refined minus input positions), detached."""
        return (self.positions - self.nominal).detach().clone()


def _affine_basis(positions: torch.Tensor) -> torch.Tensor:
    """(K, 3): centred, scaled coordinates and a constant (a well-conditioned affine basis)."""
    centre = positions.mean(dim=0)
    spread = positions.std(dim=0).clamp_min(1.0)
    ones = torch.ones(positions.shape[0], 1, dtype=positions.dtype, device=positions.device)
    return torch.cat([(positions - centre) / spread, ones], dim=1)


def rms_error(estimated: torch.Tensor, truth: torch.Tensor) -> float:
    """RMS distance (pixels) between two (K, 2) position sets after removing their mean offset."""
    d = (estimated - truth).double()
    d = d - d.mean(dim=0)
    return float(d.square().sum(dim=1).mean().sqrt())
