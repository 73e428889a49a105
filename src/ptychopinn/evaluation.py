"""Compare a complex 2-D reconstruction with a reference object.

Pipeline: crop to the scanned region, register (sub-pixel), remove the global
phase and the phase plane, scale the amplitude by the ratio of the means, then
report MAE, PSNR, SSIM and the Fourier ring correlation (FRC).

Conventions
-----------
* Arrays are indexed ``[row, column]``; shifts are ``(y, x)`` pixels and the
  registration shift is the one *applied to the reconstruction* (its content
  moves by ``+shift``) to bring it onto the reference.
* Registration, global phase, phase plane and amplitude scale: see
  :mod:`ptychopinn.registration`.
* The phase of the reconstruction is compared on the branch of the reference:
  ``phase_rec = phase_ref + angle(rec * conj(ref))`` (the wrapped difference),
  with both rotated by the reference's mean phase so its values sit near zero.
* PSNR and SSIM use ``data_range = max - min`` of the reference image (amplitude
  or phase) over the compared region, after alignment.
* FRC is computed on the complex object (the primary curve and crossings);
  amplitude and phase curves are reported too. Both images have their mean
  removed and are multiplied by a 2-D Tukey window (alpha 0.25) against edge
  leakage. Rings are 1 frequency unit wide for ``L = min(H, W)``: pixel
  ``(fy, fx)`` (cycles/pixel) lies in ring ``rint(L * hypot(fy, fx))``, rings
  ``0 .. L // 2`` (Nyquist); non-square regions thus use a normalised radius.
  The correlation is ``Re sum F1 conj(F2) / sqrt(sum|F1|^2 sum|F2|^2)`` per
  ring. A crossing is the first ring where the curve drops below the threshold,
  linearly interpolated (ring 0 counts as 1). Resolution (half period) is
  ``pixel_size_m * L / ring``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.signal.windows import tukey
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ptychopinn.errors import DataError
from ptychopinn.registration import MIN_REGION_PX, Box, align

__all__ = [
    "MIN_REGION_PX",
    "Box",
    "Comparison",
    "Metrics",
    "align",
    "comparable_phases",
    "compare",
    "evaluate",
    "frc",
    "frc_crossing",
    "metrics_from_aligned",
    "scanned_region",
    "write_comparison_figure",
]

logger = logging.getLogger(__name__)

FRC_WINDOW_ALPHA = 0.25


@dataclass(frozen=True)
class Metrics:
    """Reconstruction-vs-reference figures of merit; plain data.

    ``frc_*_rings`` are ``None`` when the curve never drops below the
    threshold; ``frc_*_resolution_m`` are ``None`` without a pixel size.
    ``crop_box`` is ``(row0, row1, col0, col1)`` of the compared region in the
    input pixel grid (end exclusive), after trimming the border wrapped by the shift.
    """

    amplitude_mae: float
    phase_mae: float
    amplitude_psnr_db: float
    phase_psnr_db: float
    amplitude_ssim: float
    phase_ssim: float
    frc_curve: tuple[float, ...]
    frc_amplitude_curve: tuple[float, ...]
    frc_phase_curve: tuple[float, ...]
    frc50_rings: float | None
    frc_1_7_rings: float | None
    frc50_resolution_m: float | None
    frc_1_7_resolution_m: float | None
    frc_n_pixels: int
    amplitude_data_range: float
    phase_data_range_rad: float
    registration_shift_px: tuple[float, float]
    global_phase_rad: float
    phase_ramp_rad_per_px: tuple[float, float]
    amplitude_scale: float
    crop_box: Box

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict; non-finite floats (e.g. PSNR of identical images) become None."""
        out = {k: _jsonable(v) for k, v in asdict(self).items()}
        out["psnr_data_range"] = "reference max - min over the compared region, after alignment"
        out["ssim_data_range"] = out["psnr_data_range"]
        out["frc_definition"] = (
            "complex object, mean removed, Tukey(0.25) window, 1-px rings of L=min(H,W) up to "
            "Nyquist; resolution_m = pixel_size_m * L / ring"
        )
        return out


@dataclass(frozen=True)
class Comparison:
    """Metrics plus the aligned (cropped) arrays they were computed on, for figures."""

    metrics: Metrics
    aligned_reconstruction: np.ndarray
    aligned_reference: np.ndarray


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def comparable_phases(rec: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phases of aligned arrays on one branch: ``(ref_phase + wrapped diff, ref_phase)``."""
    centre = np.exp(-1j * np.angle(np.sum(ref)))
    ref_phase = np.angle(ref * centre)
    return ref_phase + np.angle(rec * np.conj(ref)), ref_phase


def _psnr(true: np.ndarray, test: np.ndarray, data_range: float) -> float:
    if np.array_equal(true, test):
        return math.inf
    return float(peak_signal_noise_ratio(true, test, data_range=data_range))


def _data_range(image: np.ndarray) -> float:
    span = float(image.max() - image.min())
    return span if span > 0 else max(float(np.abs(image).max()), 1.0)


def frc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fourier ring correlation of two (h, w) images (real or complex); see module notes.

    >>> img = np.random.default_rng(0).normal(size=(32, 32))
    >>> bool(np.allclose(frc(img, img)[1:], 1.0))
    True
    """
    h, w = a.shape
    n = min(h, w)
    window = np.outer(tukey(h, FRC_WINDOW_ALPHA), tukey(w, FRC_WINDOW_ALPHA))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij"))
    rings = np.rint(radius * n).astype(np.int64).ravel()  # (h*w,)
    keep = rings <= n // 2
    rings, n_rings = rings[keep], n // 2 + 1
    cross = np.bincount(rings, (fa * np.conj(fb)).real.ravel()[keep], n_rings)
    pa = np.bincount(rings, (np.abs(fa) ** 2).ravel()[keep], n_rings)
    pb = np.bincount(rings, (np.abs(fb) ** 2).ravel()[keep], n_rings)
    denom = np.sqrt(pa * pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, cross / denom, np.nan)


def frc_crossing(curve: np.ndarray, threshold: float) -> float | None:
    """First ring where ``curve`` drops below ``threshold``, linearly interpolated.

    >>> frc_crossing(np.array([1.0, 0.9, 0.7, 0.3]), 0.5)
    2.5
    """
    prev = 1.0
    for ring in range(1, len(curve)):
        value = curve[ring]
        if not np.isfinite(value):
            continue
        if value < threshold:
            return float(ring - 1 + (prev - threshold) / (prev - value))
        prev = float(value)
    return None


def metrics_from_aligned(
    aligned_reconstruction: np.ndarray,
    aligned_reference: np.ndarray,
    info: dict[str, Any],
    *,
    pixel_size_m: float | None = None,
) -> Metrics:
    """Metrics of arrays returned by :func:`align` (with its ``info``).

    Shapes
    ------
    aligned_reconstruction, aligned_reference : (h, w) complex
    """
    if pixel_size_m is not None and not (math.isfinite(pixel_size_m) and pixel_size_m > 0):
        raise DataError(f"pixel_size_m must be a positive finite number, got {pixel_size_m}")
    rec, ref = aligned_reconstruction, aligned_reference
    amp_rec, amp_ref = np.abs(rec), np.abs(ref)
    ph_rec, ph_ref = comparable_phases(rec, ref)
    amp_range, ph_range = _data_range(amp_ref), _data_range(ph_ref)
    curve = frc(rec, ref)
    n = min(ref.shape)
    f50, f17 = frc_crossing(curve, 0.5), frc_crossing(curve, 1 / 7)

    def resolution(ring: float | None) -> float | None:
        return None if ring is None or pixel_size_m is None else pixel_size_m * n / ring

    return Metrics(
        amplitude_mae=float(np.mean(np.abs(amp_rec - amp_ref))),
        phase_mae=float(np.mean(np.abs(ph_rec - ph_ref))),
        amplitude_psnr_db=_psnr(amp_ref, amp_rec, amp_range),
        phase_psnr_db=_psnr(ph_ref, ph_rec, ph_range),
        amplitude_ssim=float(structural_similarity(amp_ref, amp_rec, data_range=amp_range)),
        phase_ssim=float(structural_similarity(ph_ref, ph_rec, data_range=ph_range)),
        frc_curve=tuple(float(v) for v in curve),
        frc_amplitude_curve=tuple(float(v) for v in frc(amp_rec, amp_ref)),
        frc_phase_curve=tuple(float(v) for v in frc(ph_rec, ph_ref)),
        frc50_rings=f50,
        frc_1_7_rings=f17,
        frc50_resolution_m=resolution(f50),
        frc_1_7_resolution_m=resolution(f17),
        frc_n_pixels=n,
        amplitude_data_range=amp_range,
        phase_data_range_rad=ph_range,
        registration_shift_px=tuple(info["registration_shift_px"]),
        global_phase_rad=float(info["global_phase_rad"]),
        phase_ramp_rad_per_px=tuple(info["phase_ramp_rad_per_px"]),
        amplitude_scale=float(info["amplitude_scale"]),
        crop_box=tuple(int(v) for v in info["crop_box"]),  # type: ignore[arg-type]
    )


def compare(
    reconstruction: np.ndarray,
    reference: np.ndarray,
    *,
    crop_box: Box | None = None,
    pixel_size_m: float | None = None,
    register: bool = True,
) -> Comparison:
    """Metrics of a reconstruction against a reference, with the aligned arrays.

    :func:`align` then :func:`metrics_from_aligned`; see the module notes.

    Parameters
    ----------
    crop_box : (row0, row1, col0, col1), end exclusive: the scanned region to
        compare (e.g. from :func:`scanned_region`); ``None`` compares everything.
    pixel_size_m : object pixel size; gives the FRC crossings in metres.
    register : estimate and remove a sub-pixel shift.

    Shapes
    ------
    reconstruction, reference : (H, W) complex, same pixel grid
    """
    rec, ref, info = align(reconstruction, reference, crop_box=crop_box, register=register)
    return Comparison(metrics_from_aligned(rec, ref, info, pixel_size_m=pixel_size_m), rec, ref)


def evaluate(
    reconstruction: np.ndarray,
    reference: np.ndarray,
    *,
    crop_box: Box | None = None,
    pixel_size_m: float | None = None,
    register: bool = True,
) -> Metrics:
    """:func:`compare` without the aligned arrays: just the :class:`Metrics`."""
    return compare(
        reconstruction, reference, crop_box=crop_box, pixel_size_m=pixel_size_m, register=register
    ).metrics


def scanned_region(
    positions_px: np.ndarray,
    patch_size: int,
    object_shape: tuple[int, int],
    support_fraction: float = 0.5,
) -> Box:
    """Bounding box of the central ``support_fraction * N`` square of every patch.

    A patch centred at ``p`` holds object pixel ``p - N // 2 + i``; its central
    ``s = round(support_fraction * N)`` pixels are ``p - s // 2 + j``, ``j < s``.
    The box (end exclusive) keeps only whole pixels inside, clipped to the object.

    Shapes
    ------
    positions_px : (M, 2) (y, x) object pixels

    >>> scanned_region(np.array([[20.0, 20.0], [40.0, 30.0]]), 16, (64, 64))
    (16, 44, 16, 34)
    """
    pos = np.asarray(positions_px, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
        raise DataError(f"positions_px: expected shape (M, 2) with M >= 1, got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise DataError("positions_px: contains non-finite values")
    if patch_size < 1 or not 0 < support_fraction <= 1:
        raise DataError(
            f"patch_size must be >= 1 and 0 < support_fraction <= 1, got {patch_size}, "
            f"{support_fraction}"
        )
    s = max(1, round(support_fraction * patch_size))
    lo = np.ceil(pos.min(axis=0) - s // 2).astype(np.int64)
    hi = np.floor(pos.max(axis=0) - s // 2 + s - 1).astype(np.int64) + 1
    r0, c0 = (max(0, int(v)) for v in lo)
    r1, c1 = min(object_shape[0], int(hi[0])), min(object_shape[1], int(hi[1]))
    if r1 <= r0 or c1 <= c0:
        raise DataError(
            f"scanned region {(r0, r1, c0, c1)} is empty on an object of shape {object_shape}"
        )
    return r0, r1, c0, c1


def write_comparison_figure(
    path: str | os.PathLike[str],
    aligned_reconstruction: np.ndarray,
    aligned_reference: np.ndarray,
    metrics: Metrics,
) -> None:
    """Write a 2 x 3 PNG: amplitude and phase of reference and reconstruction,
    the FRC curves and the wrapped phase difference. Written atomically.

    Shapes
    ------
    aligned_reconstruction, aligned_reference : (h, w) complex, as from :func:`align`
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ptychopinn.io.atomic import atomic_path
    from ptychopinn.io.images import CYCLIC_SPAN_RAD

    m, rec, ref = metrics, np.asarray(aligned_reconstruction), np.asarray(aligned_reference)
    ph_rec, ph_ref = comparable_phases(rec, ref)
    amp = (np.abs(ref), np.abs(rec))
    # a cyclic map only for phases spanning a full turn (its two ends share one colour)
    cyclic = float(np.ptp(ph_ref)) >= CYCLIC_SPAN_RAD if ph_ref.size else False
    phase_map = "twilight" if cyclic else "viridis"
    panels = [  # (image, colour limits, colour map, title); the reference sets the limits
        (amp[0], amp[0], "gray", "reference amplitude"),
        (amp[1], amp[0], "gray", f"reconstruction amplitude, SSIM {m.amplitude_ssim:.3f}"),
        (None, None, None, None),  # FRC
        (ph_ref, ph_ref, phase_map, "reference phase (rad)"),
        (ph_rec, ph_ref, phase_map, f"reconstruction phase (rad), SSIM {m.phase_ssim:.3f}"),
        (ph_rec - ph_ref, [-0.5, 0.5], "RdBu", f"phase difference (rad), MAE {m.phase_mae:.3f}"),
    ]
    fig = Figure(figsize=(14, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3).ravel()
    for ax, (image, lim, cmap, title) in zip(axes, panels, strict=True):
        if image is not None:
            im = ax.imshow(image, cmap=cmap, vmin=np.min(lim), vmax=np.max(lim))
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
            fig.colorbar(im, ax=ax, shrink=0.8)
    freq = np.arange(len(m.frc_curve)) / m.frc_n_pixels  # cycles / pixel
    ax = axes[2]
    ax.plot(freq, m.frc_curve, label="complex")
    ax.plot(freq, m.frc_amplitude_curve, label="amplitude")
    ax.plot(freq, m.frc_phase_curve, label="phase")
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.axhline(1 / 7, color="k", lw=0.8, ls=":")
    ring = "none" if m.frc50_rings is None else f"{m.frc50_rings:.1f}"
    ax.set_title(f"FRC (0.5 dashed, 1/7 dotted); 0.5 at ring {ring}", fontsize=9)
    ax.set(xlabel="spatial frequency (cycles / pixel)", ylabel="FRC", ylim=(-0.1, 1.05))
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    logger.debug("wrote %s", path)  # inside an output directory still being written
