"""Compare a complex 2-D reconstruction with a reference object (SPEC §8).

Pipeline: crop to the scanned region, register (sub-pixel), remove the global
phase and the phase plane, scale the amplitude by the ratio of the means, then
report MAE, PSNR, SSIM and the Fourier ring correlation (FRC).

Conventions
-----------
* Arrays are indexed ``[row, column]``; shifts are ``(y, x)`` pixels and the
  registration shift is the one *applied to the reconstruction* (its content
  moves by ``+shift``) to bring it onto the reference.
* Registration maximises the correlation of the shifted reconstruction with the
  reference over the compared region: ``|sum a conj(b)| / sqrt(sum|a|^2 sum|b|^2)``
  of the complex images with their means removed (free of a global phase), after the
  relative phase ramp is removed (estimated from the neighbour products, which needs
  no registration). The search (Nelder-Mead over the sub-pixel Fourier shift) starts
  from the best of: no shift, ``skimage.registration.phase_cross_correlation`` on the
  neighbour products ``o[r, c+1] o*[r, c]`` and ``o[r+1, c] o*[r, c]`` (invariant to a
  global phase and, up to one constant each, to a phase ramp), and a plain (not
  whitened) cross-correlation of the windowed complex images. Phase correlation alone
  fails on smooth objects (a Gaussian random field): their whitened spectrum is noise
  and the region's edges, and it returned shifts of several pixels for reconstructions
  that matched the reference with no shift at all. Shifts are a small correction: at most
  ``MAX_SHIFT_FRACTION`` of the region's shorter side (and at least ``SEARCH_PX`` pixels).
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
from scipy import ndimage, optimize
from scipy.signal.windows import tukey
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.registration import phase_cross_correlation

from ptychopinn.errors import DataError

logger = logging.getLogger(__name__)

#: Smallest compared region (pixels per side): SSIM needs a 7 x 7 window, FRC a few rings.
MIN_REGION_PX = 16
FRC_WINDOW_ALPHA = 0.25
Box = tuple[int, int, int, int]


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


def _check_object(name: str, array: np.ndarray) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D (H, W) array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{name}: expected a numeric (complex) array, got dtype {arr.dtype}")
    arr = arr.astype(np.complex128)
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name}: contains {int(np.sum(~np.isfinite(arr)))} non-finite values")
    return arr


def _check_box(box: Box, shape: tuple[int, int]) -> Box:
    if len(box) != 4:
        raise DataError(f"crop_box: expected (row0, row1, col0, col1), got {box!r}")
    r0, r1, c0, c1 = (int(v) for v in box)
    if not (0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]):
        raise DataError(f"crop_box {box!r} does not fit in an array of shape {shape}")
    return r0, r1, c0, c1


def _neighbour_products(obj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``o[r+1, c] o*[r, c]`` and ``o[r, c+1] o*[r, c]``, each (H-1, W-1): shift-covariant,
    free of a global phase, and a phase ramp only multiplies each by a constant."""
    base = np.conj(obj[:-1, :-1])
    return obj[1:, :-1] * base, obj[:-1, 1:] * base


def _check_size(box: Box) -> None:
    if min(box[1] - box[0], box[3] - box[2]) < MIN_REGION_PX:
        raise DataError(f"compared region {box} is smaller than {MIN_REGION_PX} px per side")


def _registration_image(obj: np.ndarray) -> np.ndarray:
    """Sum of the neighbour products, each rotated so that its own sum is real."""
    return sum(p * np.exp(-1j * np.angle(p.sum())) for p in _neighbour_products(obj))


def _estimate_shift(rec: np.ndarray, ref: np.ndarray, upsample_factor: int) -> np.ndarray:
    shift, _, _ = phase_cross_correlation(
        _registration_image(ref), _registration_image(rec), upsample_factor=upsample_factor
    )
    shift = np.asarray(shift, dtype=np.float64)
    if not np.all(np.isfinite(shift)):
        logger.warning("registration failed (non-finite shift); using zero shift")
        return np.zeros(2)
    return shift


#: How far (pixels) the correlation search may move from its best start, and the margin
#: around the compared region that its Fourier shifts may wrap.
SEARCH_PX = 3.0
#: Largest registration shift, as a fraction of the compared region's shorter side (at
#: least SEARCH_PX pixels).
MAX_SHIFT_FRACTION = 0.1
#: Side of the central part of the compared region that the correlation search scores.
REGISTRATION_WINDOW_PX = 512


def _correlation(rec: np.ndarray, ref: np.ndarray) -> float:
    """``|sum a conj(b)| / sqrt(sum|a|^2 sum|b|^2)`` of the mean-removed complex images."""
    a, b = rec - rec.mean(), ref - ref.mean()
    denom = math.sqrt(float(np.sum(np.abs(a) ** 2)) * float(np.sum(np.abs(b) ** 2)))
    return float(np.abs(np.sum(a * np.conj(b)))) / denom if denom > 0 else 0.0


def _cross_correlation_shift(rec: np.ndarray, ref: np.ndarray, upsample_factor: int) -> np.ndarray:
    """Plain cross-correlation peak of the windowed, mean-removed complex images."""
    window = np.outer(tukey(rec.shape[0], FRC_WINDOW_ALPHA), tukey(rec.shape[1], FRC_WINDOW_ALPHA))
    shift, _, _ = phase_cross_correlation(
        (ref - ref.mean()) * window,
        (rec - rec.mean()) * window,
        upsample_factor=upsample_factor,
        normalization=None,
    )
    return np.asarray(shift, dtype=np.float64)


def _central(lo: int, hi: int, size: int) -> tuple[int, int]:
    """The central ``size`` indices of ``[lo, hi)`` (all of it when shorter)."""
    if hi - lo <= size:
        return lo, hi
    start = (lo + hi) // 2 - size // 2
    return start, start + size


def _register(rec: np.ndarray, ref: np.ndarray, box: Box, upsample_factor: int) -> np.ndarray:
    """Shift applied to ``rec`` (ramp removed) that best correlates it with ``ref`` in ``box``."""
    r0, r1, c0, c1 = box
    H, W = ref.shape
    starts = [
        np.zeros(2),
        _estimate_shift(rec[r0:r1, c0:c1], ref[r0:r1, c0:c1], upsample_factor),
        _cross_correlation_shift(rec[r0:r1, c0:c1], ref[r0:r1, c0:c1], upsample_factor),
    ]
    # a poor reconstruction can correlate best with what lies far outside the region: a
    # shift is a small correction of known positions, at most MAX_SHIFT_FRACTION of the region
    limit = max(SEARCH_PX, MAX_SHIFT_FRACTION * min(r1 - r0, c1 - c0))
    starts = [s for s in starts if np.all(np.isfinite(s)) and np.max(np.abs(s)) <= limit]
    m = int(math.ceil(max(float(np.max(np.abs(s))) for s in starts) + SEARCH_PX)) + 1
    # a translation is global: the search scores the central part of a large region only
    r0, r1 = _central(r0, r1, REGISTRATION_WINDOW_PX)
    c0, c1 = _central(c0, c1, REGISTRATION_WINDOW_PX)
    # the region plus a margin: a Fourier shift of at most m - 1 px wraps only the margin
    outer = max(0, r0 - m), min(H, r1 + m), max(0, c0 - m), min(W, c1 + m)
    inner = (
        max(r0, outer[0] + m),
        min(r1, outer[1] - m),
        max(c0, outer[2] + m),
        min(c1, outer[3] - m),
    )
    if min(inner[1] - inner[0], inner[3] - inner[2]) < MIN_REGION_PX:
        return np.zeros(2)  # no room to compare shifts
    spectrum = np.fft.fft2(rec[outer[0] : outer[1], outer[2] : outer[3]])
    target = ref[inner[0] : inner[1], inner[2] : inner[3]]
    rows = slice(inner[0] - outer[0], inner[1] - outer[0])
    cols = slice(inner[2] - outer[2], inner[3] - outer[2])

    def loss(shift: np.ndarray) -> float:
        moved = np.fft.ifft2(ndimage.fourier_shift(spectrum, shift))
        return -_correlation(moved[rows, cols], target)

    scores = [loss(s) for s in starts]
    start = starts[int(np.argmin(scores))]
    found = optimize.minimize(
        loss,
        start,
        method="Nelder-Mead",
        options={
            "initial_simplex": start + np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]]),
            "xatol": 0.01,
            "fatol": 1e-9,
        },
    )
    shift = np.asarray(found.x, dtype=np.float64)
    if (
        found.fun >= min(scores)
        or np.max(np.abs(shift - start)) > SEARCH_PX
        or np.max(np.abs(shift)) > limit
    ):
        shift = start
    return np.round(shift, 3) if np.any(shift != 0) else shift


def _ramp_difference(rec: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(y, x) phase slope of ``rec`` relative to ``ref`` (needs no registration)."""
    pairs = zip(_neighbour_products(rec), _neighbour_products(ref), strict=True)
    ky, kx = (float(np.angle(a.sum() * np.conj(b.sum()))) for a, b in pairs)
    return ky, kx


def _centred_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")


def _fit_phase_plane(rec: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Constant (at the region centre) and (y, x) slopes of ``angle(rec * conj(ref))``.

    Slopes start from the amplitude-weighted mean neighbour phase difference
    (immune to wrapping), then are refined twice by a weighted least-squares
    plane fit of the wrapped residual; the constant is ``angle(sum(...))``.
    """
    d = rec * np.conj(ref)  # (h, w)
    h, w = d.shape
    yy, xx = _centred_grid(h, w)
    ky, kx = (float(np.angle(p.sum())) for p in _neighbour_products(d))
    sw = np.sqrt(np.abs(d).ravel())
    design = np.stack([np.ones(h * w), yy.ravel(), xx.ravel()], axis=1) * sw[:, None]  # (h*w, 3)
    for _ in range(2):
        ramp = np.exp(-1j * (ky * yy + kx * xx))
        const = np.angle(np.sum(d * ramp))
        resid = np.angle(d * ramp * np.exp(-1j * const)).ravel()
        coef, *_ = np.linalg.lstsq(design, resid * sw, rcond=None)
        ky, kx = ky + float(coef[1]), kx + float(coef[2])
    const = float(np.angle(np.sum(d * np.exp(-1j * (ky * yy + kx * xx)))))
    return const, ky, kx


def align(
    reconstruction: np.ndarray,
    reference: np.ndarray,
    *,
    crop_box: Box | None = None,
    register: bool = True,
    upsample_factor: int = 20,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Register and normalise a reconstruction onto a reference.

    The shift is estimated inside ``crop_box`` (sub-pixel, the best correlation; module notes)
    and applied to the whole reconstruction as a Fourier shift
    (``scipy.ndimage.fourier_shift``, periodic); the region is then cropped
    and shrunk by ``ceil(|shift|) + 1`` pixels wherever it comes that close
    to the array edge (pixels wrapped by the shift). The global phase and the
    phase ramp are removed by a weighted plane fit (see ``_fit_phase_plane``)
    and the amplitude is scaled by ``mean|ref| / mean|rec|``.

    Returns
    -------
    aligned_reconstruction, aligned_reference : (h, w) complex128 arrays
    info : dict with ``registration_shift_px``, ``global_phase_rad``,
        ``phase_ramp_rad_per_px`` (y, x), ``amplitude_scale`` and ``crop_box``

    Shapes
    ------
    reconstruction, reference : (H, W), same pixel grid
    outputs : (h, w) = size of the (trimmed) crop box
    """
    rec = _check_object("reconstruction", reconstruction)
    ref = _check_object("reference", reference)
    if rec.shape != ref.shape:
        raise DataError(
            f"reconstruction shape {rec.shape} != reference shape {ref.shape} "
            "(both must be on the same pixel grid)"
        )
    H, W = ref.shape
    r0, r1, c0, c1 = _check_box(crop_box, ref.shape) if crop_box is not None else (0, H, 0, W)
    shift, pre = np.zeros(2), (0.0, 0.0)  # pre: (y, x) ramp removed before shifting
    if register:
        _check_size((r0, r1, c0, c1))
        # a ramp is not periodic: remove it first so the Fourier shift does not ring
        ramp = _ramp_difference(rec[r0:r1, c0:c1], ref[r0:r1, c0:c1])
        rec_flat = rec * np.exp(-1j * (ramp[0] * np.arange(H)[:, None] + ramp[1] * np.arange(W)))
        shift = _register(rec_flat, ref, (r0, r1, c0, c1), upsample_factor)
        if np.any(shift != 0):
            pre = ramp
            rec = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(rec_flat), shift))
            my, mx = (int(math.ceil(abs(s))) + 1 for s in shift)
            r0, r1, c0, c1 = max(r0, my), min(r1, H - my), max(c0, mx), min(c1, W - mx)
    _check_size((r0, r1, c0, c1))
    rec, ref = rec[r0:r1, c0:c1], ref[r0:r1, c0:c1]
    const, ky, kx = _fit_phase_plane(rec, ref)
    h, w = ref.shape
    yy, xx = _centred_grid(h, w)
    rec = rec * np.exp(-1j * (const + ky * yy + kx * xx))
    rec_mean = float(np.mean(np.abs(rec)))
    scale = float(np.mean(np.abs(ref))) / rec_mean if rec_mean > 0 else 1.0
    centre_pre = pre[0] * (r0 + (h - 1) / 2 - shift[0]) + pre[1] * (c0 + (w - 1) / 2 - shift[1])
    info = {
        "registration_shift_px": (float(shift[0]), float(shift[1])),
        "global_phase_rad": float(np.angle(np.exp(1j * (const + centre_pre)))),
        "phase_ramp_rad_per_px": (pre[0] + ky, pre[1] + kx),
        "amplitude_scale": scale,
        "crop_box": (r0, r1, c0, c1),
    }
    logger.debug("alignment: %s", info)
    return rec * scale, ref, info


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

    m, rec, ref = metrics, np.asarray(aligned_reconstruction), np.asarray(aligned_reference)
    ph_rec, ph_ref = comparable_phases(rec, ref)
    amp = (np.abs(ref), np.abs(rec))
    panels = [  # (image, colour limits, colour map, title); the reference sets the limits
        (amp[0], amp[0], "gray", "reference amplitude"),
        (amp[1], amp[0], "gray", f"reconstruction amplitude, SSIM {m.amplitude_ssim:.3f}"),
        (None, None, None, None),  # FRC
        (ph_ref, ph_ref, "twilight", "reference phase (rad)"),
        (ph_rec, ph_ref, "twilight", f"reconstruction phase (rad), SSIM {m.phase_ssim:.3f}"),
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
    logger.info("wrote %s", path)
