"""Register a complex 2-D reconstruction onto a reference: register (sub-pixel),
remove the global phase and phase plane, scale the amplitude by the mean ratio.

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
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from scipy import ndimage, optimize
from scipy.signal.windows import tukey
from skimage.registration import phase_cross_correlation

from ptychopinn.errors import DataError

logger = logging.getLogger(__name__)

#: Smallest compared region (pixels per side): SSIM needs a 7 x 7 window, FRC a few rings.
MIN_REGION_PX = 16
#: Tukey window (alpha) of the plain cross-correlation that gives one start of the search.
WINDOW_ALPHA = 0.25
Box = tuple[int, int, int, int]


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
    window = np.outer(tukey(rec.shape[0], WINDOW_ALPHA), tukey(rec.shape[1], WINDOW_ALPHA))
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
