"""The object a refinement starts from: gaps filled, large-scale phase removed."""

from __future__ import annotations

import numpy as np


def smooth_fill(obj: np.ndarray, covered: np.ndarray, sigma_px: float) -> np.ndarray:
    """``obj`` (H, W) with the pixels outside ``covered`` filled by a local average.

    A network's stitched object covers the central supports of its patches; the probe
    reaches further (the corners between patches at the edge of the scan). Those pixels start
    as the Gaussian-weighted average (width ``sigma_px``) of the reconstructed pixels around
    them (normalised convolution; four times wider where none is that close, then the
    object's mean): a jump to a flat object there would cost passes and shift the object's
    registration.
    """
    if covered.all() or not covered.any():
        return obj.astype(np.complex64)
    from scipy.ndimage import gaussian_filter

    mask = covered.astype(np.float64)
    values = np.where(covered, obj, 0).astype(np.complex128)
    filled = np.full(obj.shape, values[covered].mean(), dtype=np.complex128)
    for sigma in (4 * sigma_px, sigma_px):  # the narrower average wins where it reaches
        weight = gaussian_filter(mask, sigma)
        reach = weight > 1e-3
        average = gaussian_filter(values, sigma) / np.maximum(weight, 1e-12)
        filled = np.where(reach, average, filled)
    return np.where(covered, obj, filled).astype(np.complex64)


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
