"""A human summary of a scan for ``ptychopinn check``."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ptychopinn.io.scan import ScanData


def probe_diameter_px(probe: np.ndarray, fraction: float = 0.9) -> float:
    """Diameter of the disk (about the intensity centroid) holding ``fraction`` of the probe power.

    >>> p = np.zeros((1, 32, 32), complex); p[0, 12:20, 12:20] = 1
    >>> 8 <= probe_diameter_px(p) <= 11
    True
    """
    intensity = np.sum(np.abs(probe) ** 2, axis=0)
    n = intensity.shape[-1]
    yy, xx = np.mgrid[:n, :n]
    total = intensity.sum()
    cy, cx = (intensity * yy).sum() / total, (intensity * xx).sum() / total
    r = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(r)
    cumulative = np.cumsum(intensity.ravel()[order]) / total
    return float(2 * r[order][np.searchsorted(cumulative, fraction)])


def summarize(scan: ScanData) -> dict[str, Any]:
    """Facts a user checks before training: sizes, positions, overlap, dose, probe, reference."""
    pos = scan.positions_px
    m = scan.n_patterns
    if m > 1:
        dist, _ = cKDTree(pos).query(pos, k=2)
        spacing = float(np.median(dist[:, 1]))
    else:
        spacing = float("nan")
    diameter = probe_diameter_px(scan.probe)
    overlap = max(0.0, 1.0 - spacing / diameter) if m > 1 and diameter > 0 else float("nan")
    sample = np.linspace(0, m - 1, min(m, 4096)).round().astype(np.int64)
    totals = np.sum(scan.amplitudes(sample).astype(np.float64) ** 2, axis=(1, 2))
    unit = "photons" if scan.units == "counts" else "amplitude^2"
    return {
        "file": scan.source,
        "patterns": m,
        "detector_px": f"{scan.N} x {scan.N}",
        "diffraction_dtype": str(scan.diffraction.dtype),
        "diffraction_units": scan.units,
        "positions_y_px": f"{pos[:, 0].min():.2f} .. {pos[:, 0].max():.2f}",
        "positions_x_px": f"{pos[:, 1].min():.2f} .. {pos[:, 1].max():.2f}",
        "median_spacing_px": round(spacing, 3),
        "probe_diameter_px_90pct": round(diameter, 2),
        "overlap_estimate": round(overlap, 3),
        f"{unit}_per_pattern_mean": float(f"{totals.mean():.6g}"),
        f"{unit}_per_pattern_min": float(f"{totals.min():.6g}"),
        f"{unit}_per_pattern_max": float(f"{totals.max():.6g}"),
        "probe_modes": scan.n_probe_modes,
        "probe_power": float(f"{float(np.sum(np.abs(scan.probe) ** 2)):.6g}"),
        "objects (scan_index)": int(len(np.unique(np.asarray(scan.scan_index)))),
        "reference_object": "yes, " + "x".join(map(str, scan.object.shape))
        if scan.object is not None
        else "no",
        "ground_truth_patches_Y": "yes" if scan.patches is not None else "no",
        "bad_pixels": int(scan.bad_pixels.sum()) if scan.bad_pixels is not None else 0,
    }
