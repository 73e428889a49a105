"""Maximum-likelihood refinement of a stitched object (and optionally the probe).

The network's reconstruction is a fast, approximate answer. Refinement optimises
the object canvas directly against every measured pattern with the same forward
model (:func:`~ptychopinn.physics.functional.extract_patches` then
:func:`~ptychopinn.physics.functional.far_field_amplitude`) and the same Poisson
likelihood used in training, starting from the network's estimate — or from a
flat object, for comparison.

Gradient steps on the canvas pixels correct fine detail quickly but large-scale errors only
slowly (each step is local), and large-scale phase is exactly what a network that sees one
pattern at a time gets wrong: each patch carries an arbitrary constant phase that stitching
must infer from the overlaps. So the object is parameterised as the canvas plus a coarse
correction field (one complex value per ``coarse_factor`` x ``coarse_factor`` block, bilinearly
upsampled) that is optimised alongside the canvas during the first passes and then frozen.
Before that, the start's own large-scale phase (above ``N / 4``) is discarded: the network's
detail is kept, its guess at what one pattern cannot determine is not. A wrong large-scale
phase costs refinement far more passes than a missing one (on the quality benchmark's Gaussian
random field, 0.97 phase SSIM after 30 passes instead of 0.88).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ptychopinn.data.dataset import Normalization
from ptychopinn.errors import ConfigError
from ptychopinn.inference import Reconstruction, measured_on_canvas
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import object_nll
from ptychopinn.stitching import CanvasGeometry, Stitcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineOptions:
    """Refinement settings.

    Attributes
    ----------
    n_iter : passes over all patterns
    batch_size : patterns per optimiser step (mini-batches, shuffled each pass)
    object_lr : Adam step size on the object (transmission units of order 1)
    probe_lr : Adam step size on the probe; 0 keeps the probe fixed
    schedule : ``cosine`` lowers the step sizes pass by pass to ``final_lr_fraction`` of
        their start (a fixed step keeps oscillating around the optimum at high dose);
        ``constant`` keeps them
    final_lr_fraction : step size of the last pass relative to the first (``cosine``)
    anneal_start : fraction of the passes run at the full step before annealing (``cosine``)
    coarse_factor : block size (pixels) of the coarse correction field; 0 disables it
    coarse_lr : Adam step size on the coarse field
    coarse_until : fraction of the passes over which the coarse field's step falls linearly
        to zero (it is frozen after that)
    start_phase_sigma_px : the start's phase at scales above this Gaussian width (pixels) is
        discarded before refining: a start's large-scale phase is what one pattern does not
        determine (see the module notes), and refinement corrects a wrong large-scale phase
        far more slowly than it builds up a missing one. None: N / 4 for a network's
        reconstruction, 0 for a start that was itself refined (``metadata["refine_passes"]``:
        its large-scale phase came from the overlaps); 0 keeps the start as is
    seed : shuffling seed
    """

    n_iter: int = 20
    batch_size: int = 32
    object_lr: float = 0.1
    probe_lr: float = 0.0
    schedule: Literal["constant", "cosine"] = "cosine"
    final_lr_fraction: float = 0.05
    anneal_start: float = 0.5
    coarse_factor: int = 16
    coarse_lr: float = 0.03
    coarse_until: float = 0.5
    start_phase_sigma_px: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        if not isinstance(self.coarse_factor, int) or self.coarse_factor < 0:
            raise ConfigError(
                f"coarse_factor: expected a non-negative integer, got {self.coarse_factor!r}"
            )
        if not self.object_lr > 0:
            raise ConfigError(f"object_lr: expected a positive step, got {self.object_lr!r}")
        if self.start_phase_sigma_px is not None and not self.start_phase_sigma_px >= 0:
            raise ConfigError(
                "start_phase_sigma_px: expected a non-negative width or None, "
                f"got {self.start_phase_sigma_px!r}"
            )
        if not 0.0 < self.coarse_until <= 1.0:
            raise ConfigError(f"coarse_until: expected in (0, 1], got {self.coarse_until!r}")


@dataclass
class RefineTrace:
    """Loss after each pass and the elapsed time."""

    loss: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)


def refine(
    scan: ScanData,
    probe: torch.Tensor,
    normalization: Normalization,
    start: Reconstruction | None = None,
    options: RefineOptions | None = None,
    device: torch.device | str = "cpu",
    callback: object | None = None,
) -> tuple[Reconstruction, torch.Tensor, RefineTrace]:
    """Refine an object (and optionally the probe) by maximising the Poisson likelihood.

    Parameters
    ----------
    scan : the measured patterns and positions
    probe : (P, N, N) complex probe in the normalised units of ``normalization``
        (a bundle's ``probe``)
    normalization : the amplitude factor and intensity scale (a bundle's, carried
        over to the scan with :meth:`Normalization.for_scan`)
    start : initial object; a flat unit-transmission object when None
    callback : optional ``callable(pass_index, reconstruction)`` after each pass

    Returns
    -------
    The refined reconstruction, the (possibly refined) probe, and the loss trace. Its
    ``coverage`` is the summed probe intensity over the scan positions: refinement fits every
    illuminated pixel, including those outside a network start's coverage (the corners
    between the patches' supports), which start at unit transmission.
    """
    opts = options or RefineOptions()
    n = scan.N
    positions = scan.positions_px if start is None else start.positions_px
    index = _pattern_index(scan, positions)
    if start is None:
        geometry = CanvasGeometry.covering(positions, n)
        canvas0 = np.ones(geometry.shape, dtype=np.complex64)
    else:
        geometry = CanvasGeometry(start.origin_px, start.object.shape)  # type: ignore[arg-type]
        covered = start.coverage > 0
        sigma = opts.start_phase_sigma_px
        # smoothed over the covered pixels only (the uncovered are 0 and do not count); the
        # uncovered then start at unit transmission, which matches the start's local phase
        # once its large-scale phase (and with it the arbitrary global phase) is gone
        start_obj = np.where(covered, start.object, 0).astype(np.complex64)
        if sigma is None:
            sigma = 0.0 if "refine_passes" in start.metadata else n / 4
        start_obj = without_large_scale_phase(start_obj, sigma)
        canvas0 = np.where(covered, start_obj, 1.0).astype(np.complex64)
    coverage = _illumination(probe, positions, geometry, device)
    measured, pos = measured_on_canvas(scan, index, normalization, geometry, device)
    canvas = torch.nn.Parameter(torch.from_numpy(canvas0).to(device))
    probe_param = torch.nn.Parameter(
        probe.detach().clone().to(device=device, dtype=torch.complex64)
    )
    groups = [{"params": [canvas], "lr": opts.object_lr}]
    if opts.probe_lr > 0:
        groups.append({"params": [probe_param], "lr": opts.probe_lr})
    coarse = None
    if opts.coarse_factor > 0 and opts.coarse_lr > 0:
        h, w = geometry.shape
        block = opts.coarse_factor
        # (2, 1, Hc, Wc): real and imaginary part of the correction, one value per block
        coarse = torch.nn.Parameter(
            torch.zeros(2, 1, -(-h // block), -(-w // block), device=device)
        )
        groups.append({"params": [coarse], "lr": opts.coarse_lr})
    optimizer = torch.optim.Adam(groups)
    starts = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(opts.seed)
    scale = normalization.intensity_scale
    trace = RefineTrace()

    def correction(field: torch.Tensor) -> torch.Tensor:
        """The coarse field (2, 1, Hc, Wc) upsampled to the canvas: (H, W) complex."""
        up = torch.nn.functional.interpolate(
            field, size=canvas.shape, mode="bilinear", align_corners=False
        )[:, 0]  # (2, H, W)
        return torch.complex(up[0], up[1])

    frozen: torch.Tensor | None = None  # the correction, upsampled once, after it is frozen

    def current() -> torch.Tensor:
        """The object: the canvas plus the coarse correction (if any)."""
        if frozen is not None:
            return canvas + frozen
        return canvas if coarse is None else canvas + correction(coarse)

    t0 = time.perf_counter()
    k = measured.shape[0]
    for it in range(opts.n_iter):
        factor = 1.0
        if opts.schedule == "cosine" and opts.n_iter > 1:
            f = opts.final_lr_fraction
            first = int(opts.n_iter * opts.anneal_start)  # full steps until here, then anneal
            progress = max(0, it - first) / max(1, opts.n_iter - 1 - first)
            factor = f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        for group, lr in zip(optimizer.param_groups, starts, strict=True):
            group["lr"] = lr * factor
        if coarse is not None:  # its step falls linearly to zero over coarse_until passes
            remaining = 1 - it / (opts.coarse_until * opts.n_iter)
            if remaining > 0:
                optimizer.param_groups[-1]["lr"] = starts[-1] * factor * remaining
            else:  # frozen: upsample it once instead of at every step
                with torch.no_grad():
                    frozen = correction(coarse)
                coarse = None  # its parameter gets no more gradients, so Adam skips it
        order = torch.randperm(k, generator=generator).to(device)
        total = 0.0
        for b in range(0, k, opts.batch_size):
            idx = order[b : b + opts.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = object_nll(current(), pos[idx], probe_param, measured[idx], scale)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        trace.loss.append(total / k)
        trace.elapsed_s.append(time.perf_counter() - t0)
        if callback is not None:
            with torch.no_grad():
                obj = current()
            callback(it, _result(obj, geometry, coverage, start, positions, trace))  # type: ignore[operator]
    logger.info(
        "refined %d passes over %d patterns in %.2f s (loss %.6g -> %.6g)",
        opts.n_iter, k, trace.elapsed_s[-1] if trace.elapsed_s else 0.0,
        trace.loss[0] if trace.loss else float("nan"), trace.loss[-1] if trace.loss else float("nan"),
    )  # fmt: skip
    with torch.no_grad():
        obj = current()
    result = _result(obj, geometry, coverage, start, positions, trace)
    return result, probe_param.detach(), trace


def without_large_scale_phase(obj: np.ndarray, sigma_px: float) -> np.ndarray:
    """``obj`` (H, W) complex with its phase at scales above ``sigma_px`` removed.

    The large-scale phase is the phase of ``obj`` smoothed by a Gaussian of width
    ``sigma_px`` (complex smoothing, so phase wraps do no harm); ``sigma_px = 0`` returns
    ``obj`` unchanged.
    """
    if sigma_px == 0:
        return obj
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(obj, sigma_px)  # complex: real and imaginary parts alike
    return (obj * np.exp(-1j * np.angle(smooth))).astype(obj.dtype)


def _illumination(
    probe: torch.Tensor,
    positions: np.ndarray,
    geometry: CanvasGeometry,
    device: torch.device | str = "cpu",
    chunk: int = 2048,
) -> np.ndarray:
    """Summed probe intensity (H, W) over all positions (0 where no probe reaches)."""
    intensity = probe.detach().abs().square().sum(0)  # (N, N), over the probe modes
    stitcher = Stitcher(geometry, intensity, device=device)
    ones = torch.ones(1, *intensity.shape, dtype=torch.complex64, device=device)
    pos = torch.from_numpy(np.asarray(positions, dtype=np.float64))
    for start in range(0, len(pos), chunk):
        block = pos[start : start + chunk]
        stitcher.add(ones.expand(len(block), -1, -1), block)
    return stitcher.result(min_weight=1e-9)[1].cpu().numpy().astype(np.float32)


def _pattern_index(scan: ScanData, positions: np.ndarray) -> np.ndarray:
    """Indices of ``scan``'s patterns at ``positions`` (all patterns, in order, when they match)."""
    if positions.shape == scan.positions_px.shape and np.array_equal(positions, scan.positions_px):
        return np.arange(scan.n_patterns)
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(scan.positions_px).query(positions)
    if np.any(dist > 1e-6):
        raise ValueError("refine: the start reconstruction's positions are not the scan's")
    return idx


def _result(
    canvas: torch.Tensor,
    geometry: CanvasGeometry,
    coverage: np.ndarray,
    start: Reconstruction | None,
    positions: np.ndarray,
    trace: RefineTrace,
) -> Reconstruction:
    obj = canvas.detach().cpu().numpy().astype(np.complex64)
    metadata = dict(start.metadata) if start is not None else {}
    metadata.update(
        refine_passes=len(trace.loss),
        refine_s=trace.elapsed_s[-1] if trace.elapsed_s else 0.0,
        refine_start="network" if start is not None else "flat",
    )
    return Reconstruction(
        object=np.where(coverage > 0, obj, 0).astype(np.complex64),
        origin_px=geometry.origin_px,
        coverage=coverage,
        positions_px=positions,
        metadata=metadata,
    )
