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

:func:`refine` runs a fixed number of passes. :func:`ptychopinn.refine_auto.refine_auto` decides
the number itself and cannot fit the noise: it holds out a share of the patterns, refines a twin
of the object on the others in lockstep with the object refined on all of them, and keeps the
object of the pass after which the held-out patterns were most likely — the start itself when no
pass made them more likely than the network's answer did.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ptychopinn.data.dataset import Normalization
from ptychopinn.errors import ConfigError
from ptychopinn.inference import CANVAS_BYTES_PER_PX, background_tensor, measured_on_canvas
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import object_amplitudes, object_nll, poisson_nll
from ptychopinn.positions import PositionCorrector
from ptychopinn.reconstruction import Reconstruction, RefinementRecord
from ptychopinn.start import smooth_fill, without_large_scale_phase
from ptychopinn.stitching import CanvasGeometry, Stitcher

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineOptions:
    """Refinement settings.

    Attributes
    ----------
    n_iter : passes over all patterns (with :func:`refine_auto`: the most it runs; the
        schedule is laid out over this many)
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
        determine, and refinement corrects a wrong large-scale phase far more slowly than it
        builds up a missing one. None: N / 4 for a network's reconstruction, 0 for a start
        that was itself refined; 0 keeps the start as is
    warmup_passes : the step sizes rise linearly from zero over this many passes (Adam's
        first steps move every pixel by about the full step, which shakes a good start)
    held_out_fraction : :func:`refine_auto`: share of the patterns held out to decide when
        to stop
    patience : :func:`refine_auto`: passes without a better held-out likelihood before it stops
    min_passes : :func:`refine_auto`: passes it runs before it may stop (the held-out
        likelihood of the first passes can dip and recover as the step sizes settle)
    position_lr : Adam step size (pixels) on the scan positions; 0 keeps them fixed
        (:mod:`ptychopinn.positions`)
    position_max_px : cap on each position's correction, per axis (pixels)
    position_constraint : ``free`` (each position its own correction) or ``affine`` (one
        affine map of the input positions)
    position_start_pass : the positions move from this pass on (the object forms first)
    seed : shuffling (and held-out choice) seed
    max_memory_gb : budget of the canvas (default: half the memory)
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
    warmup_passes: float = 0.0
    held_out_fraction: float = 0.1
    patience: int = 20
    min_passes: int = 40
    position_lr: float = 0.0
    position_max_px: float = 3.0
    position_constraint: Literal["free", "affine"] = "free"
    position_start_pass: int = 5
    seed: int = 0
    max_memory_gb: float | None = None

    def __post_init__(self) -> None:
        if self.schedule not in ("constant", "cosine"):
            raise ConfigError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        if not isinstance(self.n_iter, int) or self.n_iter < 0:
            raise ConfigError(f"n_iter: expected a number of passes >= 0, got {self.n_iter!r}")
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
        if not self.warmup_passes >= 0:
            raise ConfigError(f"warmup_passes: expected >= 0, got {self.warmup_passes!r}")
        if not 0.0 < self.held_out_fraction < 0.5:
            raise ConfigError(
                f"held_out_fraction: expected in (0, 0.5), got {self.held_out_fraction!r}"
            )
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ConfigError(f"patience: expected a positive integer, got {self.patience!r}")
        if not self.position_lr >= 0 or not self.position_max_px > 0:
            raise ConfigError(
                "position_lr, position_max_px: expected >= 0 and > 0, got "
                f"{self.position_lr!r}, {self.position_max_px!r}"
            )
        if self.position_constraint not in ("free", "affine"):
            raise ConfigError(
                "position_constraint: expected 'free' or 'affine', got "
                f"{self.position_constraint!r}"
            )


@dataclass
class RefineTrace:
    """Loss and amplitude R-factor of each pass, the elapsed time (``held_out``:
    :func:`refine_auto`'s held-out NLL per pattern)."""

    loss: list[float] = field(default_factory=list)
    r_factor: list[float] = field(default_factory=list)
    elapsed_s: list[float] = field(default_factory=list)
    held_out: list[float] = field(default_factory=list)


@dataclass
class _Problem:
    """What is refined: the canvas, its start, and the patterns as the physics compares them.

    Shapes
    ------
    canvas0 : (H, W) complex64 start; coverage : (H, W) summed probe intensity
    positions : (K, 2) object pixels; measured : (K, N, N); pos : (K, 2) on the canvas
    """

    geometry: CanvasGeometry
    canvas0: np.ndarray
    coverage: np.ndarray
    positions: np.ndarray
    measured: torch.Tensor
    pos: torch.Tensor
    scale: float
    mask: torch.Tensor | None = None
    pad: int = 0
    background: torch.Tensor | None = (
        None  # (N, N) normalised units  # pixels the canvas extends beyond the start's on every side
    )


def _problem(
    scan: ScanData,
    probe: torch.Tensor,
    normalization: Normalization,
    start: Reconstruction | None,
    opts: RefineOptions,
    device: torch.device | str,
) -> _Problem:
    """The canvas and its start (flat, or the start without its large-scale phase)."""
    n = scan.N
    positions = scan.positions_px if start is None else start.positions_px
    index = _pattern_index(scan, positions)
    pad = int(math.ceil(opts.position_max_px)) + 1 if opts.position_lr > 0 else 0
    if start is None:
        geometry = CanvasGeometry.covering(
            positions, n, CANVAS_BYTES_PER_PX, scan.source, opts.max_memory_gb
        )
        geometry = CanvasGeometry(
            (geometry.origin_px[0] - pad, geometry.origin_px[1] - pad),
            (geometry.shape[0] + 2 * pad, geometry.shape[1] + 2 * pad),
        )
        canvas0 = np.ones(geometry.shape, dtype=np.complex64)
    else:  # room for the positions to move: a border the fill below extends the start into
        obj, covered = np.pad(start.object, pad), np.pad(start.coverage > 0, pad)
        geometry = CanvasGeometry(
            (start.origin_px[0] - pad, start.origin_px[1] - pad),
            obj.shape,  # type: ignore[arg-type]
        )
        sigma = opts.start_phase_sigma_px
        if sigma is None:
            sigma = 0.0 if start.refinement is not None else n / 4
        # smoothed over the covered pixels only (the uncovered are 0 and do not count)
        start_obj = np.where(covered, obj, 0).astype(np.complex64)
        start_obj = without_large_scale_phase(start_obj, sigma)
        canvas0 = smooth_fill(start_obj, covered, n / 16)
    coverage = _illumination(probe, positions, geometry, device)
    measured, pos = measured_on_canvas(scan, index, normalization, geometry, device)
    good = scan.good_pixels
    mask = None if good is None else torch.from_numpy(good).to(device)
    return _Problem(
        geometry,
        canvas0,
        coverage,
        positions,
        measured,
        pos,
        normalization.intensity_scale,
        mask,
        pad if start is not None else 0,
        background_tensor(scan, normalization, device),
    )


class _Refiner:
    """One object (canvas + coarse field, optionally the probe and the positions) and its
    Adam optimiser; ``movable``: the positions it may correct (None: all)."""

    def __init__(
        self,
        problem: _Problem,
        probe: torch.Tensor,
        opts: RefineOptions,
        device: str,
        movable: torch.Tensor | None = None,
    ):
        self.opts = opts
        self.it = 0
        self.positions: PositionCorrector | None = None
        if opts.position_lr > 0:
            self.positions = PositionCorrector(
                problem.pos, opts.position_lr, opts.position_max_px, opts.position_constraint,
                movable,
            )  # fmt: skip
        self.canvas = torch.nn.Parameter(torch.from_numpy(problem.canvas0.copy()).to(device))
        self.probe = torch.nn.Parameter(
            probe.detach().clone().to(device=device, dtype=torch.complex64)
        )
        groups = [{"params": [self.canvas], "lr": opts.object_lr}]
        if opts.probe_lr > 0:
            groups.append({"params": [self.probe], "lr": opts.probe_lr})
        self.coarse: torch.nn.Parameter | None = None
        self.frozen: torch.Tensor | None = None  # the correction, upsampled once frozen
        if opts.coarse_factor > 0 and opts.coarse_lr > 0:
            h, w = problem.geometry.shape
            block = opts.coarse_factor
            # (2, 1, Hc, Wc): real and imaginary part of the correction, one value per block
            self.coarse = torch.nn.Parameter(
                torch.zeros(2, 1, -(-h // block), -(-w // block), device=device)
            )
            groups.append({"params": [self.coarse], "lr": opts.coarse_lr})
        self.optimizer = torch.optim.Adam(groups)
        self.starts = [g["lr"] for g in self.optimizer.param_groups]
        self.pass_lrs = list(self.starts)  # this pass's step sizes (before the warmup)
        self.factor = 1.0  # this pass's step size relative to the first's
        self.final_anneal: tuple[int, float, int] | None = None  # (from pass, factor, passes)
        self.steps = 0
        k = problem.measured.shape[0]
        self.warmup_steps = opts.warmup_passes * -(-k // opts.batch_size)

    def _correction(self, field: torch.Tensor) -> torch.Tensor:
        """The coarse field (2, 1, Hc, Wc) upsampled to the canvas: (H, W) complex."""
        up = torch.nn.functional.interpolate(
            field, size=self.canvas.shape, mode="bilinear", align_corners=False
        )[:, 0]  # (2, H, W)
        return torch.complex(up[0], up[1])

    def current(self) -> torch.Tensor:
        """The object: the canvas plus the coarse correction (if any)."""
        if self.frozen is not None:
            return self.canvas + self.frozen
        return self.canvas if self.coarse is None else self.canvas + self._correction(self.coarse)

    def begin_pass(self, it: int) -> None:
        """Step sizes of pass ``it``: held, then cosine-annealed; the coarse field fades."""
        opts = self.opts
        self.it = it
        factor = 1.0
        if opts.schedule == "cosine" and opts.n_iter > 1:
            f = opts.final_lr_fraction
            first = int(opts.n_iter * opts.anneal_start)  # full steps until here, then anneal
            progress = max(0, it - first) / max(1, opts.n_iter - 1 - first)
            factor = f + (1 - f) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if self.final_anneal is not None:
            first, f0, length = self.final_anneal
            f = opts.final_lr_fraction
            progress = (it - first + 1) / length
            factor = f + (f0 - f) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        self.factor = factor
        self.pass_lrs = [lr * factor for lr in self.starts]
        if self.coarse is not None:  # its step falls linearly to zero over coarse_until passes
            remaining = 1 - it / (opts.coarse_until * opts.n_iter)
            if remaining > 0:
                self.pass_lrs[-1] = self.starts[-1] * factor * remaining
            else:  # frozen: upsample it once instead of at every step
                with torch.no_grad():
                    self.frozen = self._correction(self.coarse)
                self.coarse = None  # its parameter gets no more gradients, so Adam skips it
                self.pass_lrs[-1] = 0.0

    def anneal_now(self, it: int, passes: int) -> None:
        """From pass ``it`` on, the step sizes fall to their final value over ``passes``."""
        self.final_anneal = (it, self.factor, passes)

    def _set_step_sizes(self) -> float:
        """This step's step sizes; returns the warm-up ramp."""
        ramp = min(1.0, (self.steps + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        for group, lr in zip(self.optimizer.param_groups, self.pass_lrs, strict=True):
            group["lr"] = lr * ramp
        return ramp

    def pos(self, problem: _Problem) -> torch.Tensor:
        """(K, 2) the positions on the canvas as they are now."""
        return problem.pos if self.positions is None else self.positions.positions

    def run_pass(self, problem: _Problem, order: torch.Tensor) -> tuple[float, float]:
        """One pass over the patterns ``order`` (indices, in the order visited): their mean
        loss and their amplitude R-factor (each batch's, under the object as it was then)."""
        # on the device until the pass ends (no host sync per batch)
        total, misfit, signal = (
            torch.zeros((), dtype=torch.float64, device=self.canvas.device) for _ in range(3)
        )
        for b in range(0, len(order), self.opts.batch_size):
            idx = order[b : b + self.opts.batch_size]
            ramp = self._set_step_sizes()
            self.steps += 1
            self.optimizer.zero_grad(set_to_none=True)
            measured = problem.measured[idx]
            n = measured.shape[-1]
            predicted = object_amplitudes(
                self.current(), self.pos(problem)[idx], self.probe, n, problem.background
            )
            loss = poisson_nll(predicted, measured, problem.scale, mask=problem.mask)
            with torch.no_grad():
                mask = 1.0 if problem.mask is None else problem.mask
                misfit = misfit + ((predicted - measured).abs() * mask).sum()
                signal = signal + (measured * mask).sum()
            loss.backward()
            self.optimizer.step()
            if self.positions is not None:
                moving = self.it >= self.opts.position_start_pass
                self.positions.step(idx, self.factor * ramp if moving else 0.0)
            total = total + loss.detach() * len(idx)
        if self.positions is not None:
            self.positions.constrain()
        r_factor = float(misfit) / max(float(signal), 1e-30)
        return float(total) / max(len(order), 1), r_factor

    def fit_positions(self, problem: _Problem, index: torch.Tensor) -> None:
        """Steps of the positions ``index`` alone, against the object as it is (which those
        patterns do not change): the held-out patterns' own position corrections."""
        if self.positions is None or self.it < self.opts.position_start_pass:
            return
        obj, probe = self.current().detach(), self.probe.detach()
        for b in range(0, len(index), self.opts.batch_size):
            idx = index[b : b + self.opts.batch_size]
            measured = problem.measured[idx]
            n = measured.shape[-1]
            predicted = object_amplitudes(obj, self.pos(problem)[idx], probe, n, problem.background)
            poisson_nll(predicted, measured, problem.scale, mask=problem.mask).backward()
            self.positions.step(idx, self.factor)
        self.positions.constrain()

    @torch.no_grad()
    def snapshot(self) -> dict[str, Any]:
        """The object, the probe and the position corrections as they are now (copies)."""
        return {
            "object": self.current().detach().clone(),
            "probe": self.probe.detach().clone(),
            "correction": self.correction(),
        }

    def correction(self) -> torch.Tensor | None:
        """(K, 2) refined minus input positions (None: positions not refined)."""
        return None if self.positions is None else self.positions.correction()

    @torch.no_grad()
    def nll(self, problem: _Problem, index: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """(len(index),) Poisson NLL of the patterns ``index`` under the current object."""
        obj = self.current()
        return torch.cat(
            [
                object_nll(
                    obj,
                    self.pos(problem)[idx],
                    self.probe,
                    problem.measured[idx],
                    problem.scale,
                    per_pattern=True,
                    mask=problem.mask,
                    background=problem.background,
                )
                for idx in index.split(chunk)
            ]
        )


def refine(
    scan: ScanData,
    probe: torch.Tensor,
    normalization: Normalization,
    start: Reconstruction | None = None,
    options: RefineOptions | None = None,
    device: torch.device | str = "cpu",
    callback: Callable[[int, Reconstruction], None] | None = None,
) -> tuple[Reconstruction, torch.Tensor, RefineTrace]:
    """Refine an object (and optionally the probe) for ``options.n_iter`` passes.

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
    problem = _problem(scan, probe, normalization, start, opts, device)
    refiner = _Refiner(problem, probe, opts, str(device))
    generator = torch.Generator().manual_seed(opts.seed)
    k = problem.measured.shape[0]
    trace = RefineTrace()
    t0 = time.perf_counter()
    for it in range(opts.n_iter):
        refiner.begin_pass(it)
        order = torch.randperm(k, generator=generator).to(device)
        loss, r = refiner.run_pass(problem, order)
        trace.loss.append(loss)
        trace.r_factor.append(r)
        trace.elapsed_s.append(time.perf_counter() - t0)
        _log_progress(trace, it, opts.n_iter)
        if callback is not None:
            with torch.no_grad():
                callback(it, _result(refiner.current(), problem, start, refiner.probe))
    _log_done(trace, k)
    record = RefinementRecord(
        requested=str(opts.n_iter),
        passes=opts.n_iter,
        stop_reason=f"{opts.n_iter} passes, as asked",
        start="network" if start is not None else "flat",
        seconds=trace.elapsed_s[-1] if trace.elapsed_s else 0.0,
        probe_refined=opts.probe_lr > 0,
        r_factor=trace.r_factor[-1] if trace.r_factor else None,
        **_position_fields(refiner.correction()),
    )
    with torch.no_grad():
        correction = refiner.correction()
        result = _result(refiner.current(), problem, start, refiner.probe, record, correction)
    return result, refiner.probe.detach(), trace


def _position_fields(correction: torch.Tensor | None) -> dict[str, Any]:
    """The record's account of the position correction (none: positions as given)."""
    if correction is None:
        return {}
    rms = float(correction.double().square().sum(dim=1).mean().sqrt())
    return {"positions_refined": True, "position_correction_rms_px": rms}


def _log_progress(trace: RefineTrace, it: int, n_iter: int) -> None:
    """One line every tenth of the passes (a long refinement is not silent for minutes)."""
    every = max(1, n_iter // 10)
    if (it + 1) % every or it + 1 == n_iter:
        return
    held = f", held-out NLL {trace.held_out[-1]:.6g}" if trace.held_out else ""
    logger.info(
        "refine: pass %d of at most %d, loss %.6g, R-factor %.4f%s, %.1f s",
        it + 1, n_iter, trace.loss[-1], trace.r_factor[-1], held, trace.elapsed_s[-1],
    )  # fmt: skip


def _log_done(trace: RefineTrace, k: int) -> None:
    logger.info(
        "refined %d passes over %d patterns in %.2f s (loss %.6g -> %.6g)",
        len(trace.loss), k, trace.elapsed_s[-1] if trace.elapsed_s else 0.0,
        trace.loss[0] if trace.loss else float("nan"), trace.loss[-1] if trace.loss else float("nan"),
    )  # fmt: skip


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
        raise ConfigError("refine: the start reconstruction's positions are not the scan's")
    return idx


def _result(
    canvas: torch.Tensor,
    problem: _Problem,
    start: Reconstruction | None,
    probe: torch.Tensor,
    record: RefinementRecord | None = None,
    correction: torch.Tensor | None = None,
) -> Reconstruction:
    """The canvas as a reconstruction; ``correction`` (K, 2): refined minus input positions."""
    obj = canvas.detach().cpu().numpy().astype(np.complex64)
    metadata = dict(start.metadata) if start is not None else {}
    positions = problem.positions
    if correction is not None:
        positions = positions + correction.cpu().numpy().astype(positions.dtype)
    return Reconstruction(
        object=np.where(problem.coverage > 0, obj, 0).astype(np.complex64),
        origin_px=problem.geometry.origin_px,
        coverage=problem.coverage,
        positions_px=positions,
        N=int(problem.measured.shape[-1]),
        probe=probe.detach().cpu().numpy().astype(np.complex64),
        pixel_size_m=start.pixel_size_m if start is not None else None,
        collapsed=start.collapsed if start is not None else False,
        refinement=record,
        metadata=metadata,
    )
