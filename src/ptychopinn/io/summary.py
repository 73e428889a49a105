"""A human summary of a scan for ``ptychopinn check``."""

from __future__ import annotations

from dataclasses import dataclass
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


#: A measured pattern centre further than this from the probe's (pixels) is reported.
CENTRE_TOLERANCE_PX = 1.0
#: The mean pattern's size over the probe far field's beyond this factor (or under its
#: inverse) is reported.
SIZE_TOLERANCE = 1.25


@dataclass(frozen=True)
class DiffractionGeometry:
    """Where the measured patterns' centre lies against the forward model's.

    ``offset_px`` (dy, dx): the shift that best aligns the probe's far-field intensity
    (zero frequency at N // 2, the forward model's convention) with the mean measured
    pattern, from the peak of their circular cross-correlation (sub-pixel by a parabola
    through the peak). Near (N/2, N/2) the zero frequency of the data sits in the array
    corner: the patterns were not fftshifted.
    """

    offset_px: tuple[float, float]
    n: int
    patterns_used: int
    size_ratio: float = 1.0

    @property
    def corner(self) -> bool:
        """The data's zero frequency is in the array corner (not fftshifted)."""
        q = self.n / 4
        return all(abs(o) > q for o in self.offset_px)

    def problems(self) -> list[str]:
        """What a user must fix before training (empty: nothing)."""
        if self.corner:
            return [
                "the patterns' zero frequency is in the array corner, not at the centre "
                f"(offset {self.offset_px[0]:.1f}, {self.offset_px[1]:.1f} px against the "
                "probe's far field): ptychopinn convert FILE FIXED.npz shifts them (as does "
                "np.fft.fftshift(diffraction, axes=(1, 2)))"
            ]
        return []

    def warnings(self) -> list[str]:
        dy, dx = self.offset_px
        out = []
        if not self.corner and not 1 / SIZE_TOLERANCE < self.size_ratio < SIZE_TOLERANCE:
            out.append(
                f"the mean pattern's central disk (50 % of its power) is {self.size_ratio:.2f} "
                "times the size of the probe's far field: a probe from another energy, "
                "detector distance or binning (or a strongly scattering object)"
            )
        if not self.corner and np.hypot(dy, dx) > CENTRE_TOLERANCE_PX:
            out.append(
                f"the mean pattern's centre lies {dy:+.2f}, {dx:+.2f} px (y, x) from the "
                "probe's far field: a diffraction-centre offset (or a probe from another "
                "setup); ptychopinn convert FILE FIXED.npz corrects it (a phase ramp on the probe)"
            )
        return out


def diffraction_geometry(scan: ScanData, max_patterns: int = 1024) -> DiffractionGeometry:
    """Compare the mean measured pattern with the probe's far field (:class:`DiffractionGeometry`)."""
    m, n = scan.n_patterns, scan.N
    sample = np.unique(np.linspace(0, m - 1, min(m, max_patterns)).round().astype(np.int64))
    mean = np.mean(scan.amplitudes(sample).astype(np.float64) ** 2, axis=0)
    far = np.fft.fftshift(np.fft.fft2(scan.probe, norm="ortho"), axes=(-2, -1))
    model = np.sum(np.abs(far) ** 2, axis=0)
    # circular cross-correlation: peak at the shift that moves the model onto the data
    corr = np.real(np.fft.ifft2(np.fft.fft2(mean) * np.conj(np.fft.fft2(model))))
    py, px = (int(v) for v in np.unravel_index(int(np.argmax(corr)), corr.shape))
    offset = []
    for p, line in ((py, corr[:, px]), (px, corr[py, :])):
        lo, mid, hi = (float(line[(p + d) % n]) for d in (-1, 0, 1))
        curvature = lo - 2 * mid + hi
        shift = p + (0.5 * (lo - hi) / curvature if curvature < 0 else 0.0)
        offset.append(float(shift - n if shift > n / 2 else shift))
    # the radius holding half the power: the probe's far field against the measured patterns
    ratio = probe_diameter_px(np.sqrt(mean)[None], 0.5) / max(probe_diameter_px(far, 0.5), 1e-9)
    return DiffractionGeometry((offset[0], offset[1]), n, len(sample), ratio)


def median_spacing_px(positions_px: np.ndarray) -> float:
    """Median distance (px) from each position (M, 2) to its nearest neighbour; NaN for
    fewer than two positions."""
    if positions_px.shape[0] < 2:
        return float("nan")
    dist, _ = cKDTree(positions_px).query(positions_px, k=2)
    return float(np.median(dist[:, 1]))


def summarize(scan: ScanData, geometry: DiffractionGeometry | None = None) -> dict[str, Any]:
    """Facts a user checks before training: sizes, positions, overlap, dose, probe, reference."""
    pos = scan.positions_px
    m = scan.n_patterns
    spacing = median_spacing_px(pos)
    diameter = probe_diameter_px(scan.probe)
    overlap = max(0.0, 1.0 - spacing / diameter) if m > 1 and diameter > 0 else float("nan")
    sample = np.linspace(0, m - 1, min(m, 4096)).round().astype(np.int64)
    totals = np.sum(scan.amplitudes(sample).astype(np.float64) ** 2, axis=(1, 2))
    unit = "photons" if scan.units == "counts" else "amplitude^2"
    geometry = geometry or diffraction_geometry(scan)
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
        "background_per_pattern": "none"
        if scan.background is None
        else f"{float(scan.background.sum()):.6g} {unit} (modelled in every likelihood)",
        "diffraction_centre_offset_px": "{:+.2f}, {:+.2f} (y, x; against the probe's far field, "
        "{} patterns' mean)".format(*geometry.offset_px, geometry.patterns_used),
        "zero_frequency": "array corner (NOT fftshifted)" if geometry.corner else "array centre",
        "far_field_size_ratio": f"{geometry.size_ratio:.2f} (mean pattern / probe far field, "
        "50 % power radius)",
    }
