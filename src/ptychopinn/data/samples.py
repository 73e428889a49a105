"""Test objects, probes and scan paths for simulated scans (:mod:`ptychopinn.data.simulate`).

Each is a plain array from its parameters and a random generator: a complex object from
scikit-image samples, random lines or Gaussian random fields; a defocused-disk or Gaussian
probe; raster, Fermat-spiral or random scan positions.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import torch

from ptychopinn.errors import ConfigError
from ptychopinn.physics.functional import ifft2c

ObjectKind = Literal["lines", "grf", "image", "shapes", "texture", "star"]
#: The object kinds :func:`training_object` draws from (natural images and the Siemens star
#: are kept out, so a model trained on them can be tested on unseen classes).
TRAINING_KINDS: tuple[ObjectKind, ...] = ("lines", "grf", "shapes", "texture")
ProbeKind = Literal["disk", "gaussian"]
ScanKind = Literal["raster", "spiral", "random"]

_GOLDEN_ANGLE_RAD = math.pi * (3.0 - math.sqrt(5.0))
#: Median nearest-neighbour spacing of the golden-angle Fermat spiral r = c sqrt(k), units of c.
_SPIRAL_SPACING = 1.71


def _check_kind(name: str, value: str, kind_type: object) -> None:
    allowed = get_args(kind_type)
    if value not in allowed:
        raise ConfigError(f"{name}: expected one of {list(allowed)}, got {value!r}")


def make_object(
    kind: ObjectKind,
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    max_phase_rad: float = math.pi / 2,
    amplitude_range: tuple[float, float] = (0.5, 1.0),
    feature_px: float = 3.0,
    image_pair: int = 0,
) -> np.ndarray:
    """A complex test object ``A * exp(i * phi)``.

    Parameters
    ----------
    kind : ``"lines"``: random anti-aliased segments (5-30 % of the smaller side long),
        smoothed over 1 px; on the lines the amplitude drops and the phase rises.
        ``"grf"``: Gaussian random fields (white noise smoothed over ``feature_px``),
        independent for amplitude and phase. ``"image"``: scikit-image's bundled ``camera``
        as the phase and grey ``astronaut`` as the amplitude (``image_pair`` 0; other pairs in
        :data:`IMAGE_PAIRS`), centre-cropped and resized (``rng`` unused). ``"shapes"``:
        random filled ellipses and polygons of several heights (as lithographed or
        particulate samples), smoothed over 0.7 px; amplitude and phase follow the height.
        ``"texture"``: power-law (1/f^beta) noise, beta drawn in [1.5, 3.5], independent for
        amplitude and phase. ``"star"``: a 36-spoke Siemens star filling the object,
        amplitude dropping and phase rising on the spokes (``rng`` unused).
    shape : (Ho, Wo) object size in pixels.
    rng : source of randomness.
    max_phase_rad : the phase spans [-max_phase_rad, max_phase_rad].
    amplitude_range : (low, high), 0 < low <= high <= 1: the span of the amplitude.
    feature_px : smoothing length (Gaussian standard deviation) of ``"grf"``, pixels.
    image_pair : which (amplitude, phase) pair of :data:`IMAGE_PAIRS` ``"image"`` uses.

    Shapes
    ------
    returns (Ho, Wo) complex64

    >>> obj = make_object("grf", (32, 48), np.random.default_rng(0))
    >>> obj.shape, obj.dtype, bool(np.abs(obj).max() <= 1)
    ((32, 48), dtype('complex64'), True)
    """
    _check_kind("object_kind", kind, ObjectKind)
    h, w = (int(v) for v in shape)
    low, high = amplitude_range
    if not (0 < low <= high <= 1 and h > 0 and w > 0 and max_phase_rad >= 0 and feature_px > 0):
        raise ConfigError(
            "object: expected 0 < low <= high <= 1 in amplitude_range, positive shape and "
            f"feature_px, max_phase_rad >= 0; got amplitude_range={amplitude_range}, "
            f"shape={tuple(shape)}, feature_px={feature_px}, max_phase_rad={max_phase_rad}"
        )
    if kind == "lines":
        thickness = _lines_map((h, w), rng)
        amp_map, phase_map = 1.0 - thickness, thickness
    elif kind == "grf":
        amp_map, phase_map = (_grf_map((h, w), feature_px, rng) for _ in range(2))
    elif kind == "shapes":
        height = _shapes_map((h, w), rng)
        amp_map, phase_map = 1.0 - height, height
    elif kind == "texture":
        amp_map, phase_map = (_power_law_map((h, w), rng) for _ in range(2))
    elif kind == "star":
        height = _star_map((h, w))
        amp_map, phase_map = 1.0 - height, height
    else:
        amp_name, phase_name = IMAGE_PAIRS[image_pair % len(IMAGE_PAIRS)]
        amp_map = _fit_image(_grey_sample(amp_name), (h, w))
        phase_map = _fit_image(_grey_sample(phase_name), (h, w))
    amplitude = low + (high - low) * amp_map  # (Ho, Wo) in [low, high]
    phase = max_phase_rad * (2.0 * phase_map - 1.0)  # (Ho, Wo) in [-max, max]
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


#: (amplitude, phase) scikit-image sample pairs of the ``"image"`` object, all shipped offline.
IMAGE_PAIRS = (
    ("astronaut", "camera"),
    ("chelsea", "coins"),
    ("coffee", "moon"),
    ("rocket", "brick"),
)


def _grey_sample(name: str) -> np.ndarray:
    from skimage import data
    from skimage.color import rgb2gray

    image = np.asarray(getattr(data, name)(), dtype=np.float64)
    return rgb2gray(image) if image.ndim == 3 else image


def _unit_range(x: np.ndarray) -> np.ndarray:
    """Map linearly onto [0, 1] (a constant map becomes zeros)."""
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def _lines_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    from skimage.draw import line_aa

    h, w = shape
    n_lines = max(1, round(h * w / 400))
    length = np.maximum(rng.uniform(0.05, 0.3, n_lines) * min(h, w), 2.0)
    angle = rng.uniform(0.0, math.pi, n_lines)
    start = rng.uniform(0.0, 1.0, (n_lines, 2)) * (h - 1, w - 1)  # (L, 2) row, column
    stop = start + length[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
    stop = np.clip(stop, 0, (h - 1, w - 1))
    ends = np.rint(np.concatenate([start, stop], axis=1)).astype(np.int64)  # (L, 4)
    canvas = np.zeros(shape)
    for a, b, c, d in ends:  # one call per line segment, not per pattern
        rr, cc, val = line_aa(int(a), int(b), int(c), int(d))
        keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        np.maximum.at(canvas, (rr[keep], cc[keep]), val[keep])
    return _unit_range(gaussian_filter(canvas, 1.0))


def _grf_map(shape: tuple[int, int], feature_px: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return _unit_range(gaussian_filter(rng.standard_normal(shape), feature_px, mode="wrap"))


def _shapes_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    from skimage.draw import ellipse, polygon

    h, w = shape
    canvas = np.zeros(shape)
    for _ in range(max(1, round(h * w / 600))):
        size = rng.uniform(0.02, 0.15) * min(h, w)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        level = rng.choice([0.33, 0.67, 1.0])
        if rng.random() < 0.5:
            r1, r2 = size * rng.uniform(0.3, 1.0, 2)
            rr, cc = ellipse(
                cy, cx, max(r1, 1.0), max(r2, 1.0), shape, rotation=rng.uniform(0, math.pi)
            )
        else:
            k = int(rng.integers(3, 7))
            angles = np.sort(rng.uniform(0, 2 * math.pi, k))
            radii = size * rng.uniform(0.5, 1.0, k)
            rr, cc = polygon(cy + radii * np.sin(angles), cx + radii * np.cos(angles), shape)
        canvas[rr, cc] = level  # later shapes cover earlier ones
    return _unit_range(gaussian_filter(canvas, 0.7))


def _power_law_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    beta = rng.uniform(1.5, 3.5)
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])  # (h, w // 2 + 1)
    f[0, 0] = 1.0
    spectrum = np.fft.rfft2(rng.standard_normal(shape)) * f ** (-beta / 2)
    spectrum[0, 0] = 0.0
    return _unit_range(np.fft.irfft2(spectrum, s=shape))


def _star_map(shape: tuple[int, int], spokes: int = 36) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    h, w = shape
    y, x = np.mgrid[:h, :w] - np.array([(h - 1) / 2, (w - 1) / 2])[:, None, None]
    radius, angle = np.hypot(y, x), np.arctan2(y, x)
    star = (np.cos(spokes * angle) > 0) & (radius < 0.48 * min(h, w)) & (radius > 2)
    return _unit_range(gaussian_filter(star.astype(np.float64), 0.7))


def training_object(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random object of a random :data:`TRAINING_KINDS` kind, contrast and scale.

    For training a network that inverts the forward model rather than learns one sample:
    the kind, the feature size (GRF 1-6 px), the phase span (0.2-0.95 pi) and the amplitude
    (phase-only in a quarter of draws, strongly absorbing down to 0.1 in another quarter)
    are drawn from ``rng``.

    Shapes
    ------
    returns (Ho, Wo) complex64

    >>> obj = training_object((40, 40), np.random.default_rng(1))
    >>> obj.shape, bool(np.abs(obj).max() <= 1 + 1e-6)
    ((40, 40), True)
    """
    kind = TRAINING_KINDS[int(rng.integers(len(TRAINING_KINDS)))]
    contrast = rng.random()
    if contrast < 0.25:  # phase only
        amplitude_range = (1.0, 1.0)
    elif contrast < 0.5:  # strongly absorbing
        amplitude_range = (float(rng.uniform(0.1, 0.4)), 1.0)
    else:
        amplitude_range = (float(rng.uniform(0.4, 0.9)), 1.0)
    return make_object(
        kind,
        shape,
        rng,
        max_phase_rad=float(rng.uniform(0.2, 0.95)) * math.pi,
        amplitude_range=amplitude_range,
        feature_px=float(rng.uniform(1.0, 6.0)),
    )


def _fit_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``image`` to the aspect of ``shape``, resize to it, map onto [0, 1]."""
    from skimage.transform import resize

    (h, w), (ih, iw) = shape, image.shape
    scale = min(ih / h, iw / w)
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))  # crop with the aspect of shape
    top, left = (ih - ch) // 2, (iw - cw) // 2
    return _unit_range(resize(image[top : top + ch, left : left + cw], shape, anti_aliasing=True))


def make_probe(
    kind: ProbeKind, n: int, *, diameter_px: float | None = None, defocus: float | None = None
) -> np.ndarray:
    """A probe on an n x n grid, centred at pixel (n // 2, n // 2).

    Parameters
    ----------
    kind : "disk" or "gaussian".
        ``"disk"``: the defocused spot of a focusing optic: a circular pupil (edge softened
        over 2 detector pixels) times a quadratic (Fresnel) phase, transformed to the sample
        plane. Geometric optics gives a uniform disk of ``diameter_px``; diffraction adds
        Fresnel rings and a bright rim. The pupil radius (that of the probe's own diffraction
        disk) is ``2 * defocus / diameter_px`` cycles per pixel, at most 0.5.
        ``"gaussian"``: intensity ``exp(-2 r**2 / R**2)``, ``R = diameter_px / 2``, times a
        quadratic phase.
    n : grid size in pixels.
    diameter_px : probe diameter in object pixels, default ``n / 3``.
    defocus : quadratic phase at radius ``diameter_px / 2`` in units of pi rad (the number of
        Fresnel zones in the probe); default ``diameter_px / 6`` for ``"disk"`` (pupil radius
        1/3 cycle per pixel), 1 for ``"gaussian"``.

    Scaled so that ``sum |P|**2 = (n / 2)**2`` (as ``normalize_probe``). With the default
    diameter over 95 % of the intensity lies within the central disk of diameter n / 2.

    Shapes
    ------
    returns (n, n) complex64

    >>> p = make_probe("disk", 64)
    >>> p.shape, p.dtype, round(float(np.sum(np.abs(p) ** 2)))
    ((64, 64), dtype('complex64'), 1024)
    """
    _check_kind("probe_kind", kind, ProbeKind)
    diameter = n / 3 if diameter_px is None else float(diameter_px)
    if n < 8 or not 0 < diameter <= n:
        raise ConfigError(f"probe: expected N >= 8 and diameter_px in (0, N], got {n}, {diameter}")
    zones = (diameter / 6 if kind == "disk" else 1.0) if defocus is None else float(defocus)
    if kind == "disk":
        pupil_radius = 2.0 * zones / diameter  # cycles per pixel
        if not 0 < pupil_radius <= 0.5:
            raise ConfigError(
                f"probe defocus: expected in (0, {diameter / 4:g}] (pupil radius "
                f"2 * defocus / diameter_px <= 0.5 cycle per pixel), got {zones:g}"
            )
        freq = (np.arange(n) - n // 2) / n  # centred frequencies, cycles per pixel
        rho = np.hypot(freq[:, None], freq[None, :])  # (n, n)
        pupil = np.clip((pupil_radius - rho) * n / 2 + 0.5, 0.0, 1.0)  # 2-pixel soft edge
        c = diameter / (2.0 * pupil_radius)  # rays at frequency f land at radius c * f
        field = pupil * np.exp(1j * math.pi * c * rho**2)
        probe = torch.fft.fftshift(ifft2c(torch.from_numpy(field))).numpy()  # centre at n // 2
    else:
        ar = np.arange(n) - n // 2
        r2 = (ar[:, None] ** 2 + ar[None, :] ** 2) / (diameter / 2) ** 2  # (n, n) (r / R)**2
        probe = np.exp(-r2 - 1j * math.pi * zones * r2)  # intensity exp(-2 (r / R)**2)
    probe = probe * (n / 2) / math.sqrt(float(np.sum(np.abs(probe) ** 2)))
    return probe.astype(np.complex64)


def add_probe_modes(probe: np.ndarray, modes: int, power_fraction: float = 0.05) -> np.ndarray:
    """Incoherent modes added to a probe estimate, as a start for refining them.

    Mode ``k`` starts as the first mode times a low-order polynomial in x and y (x, y, xy,
    x^2 - y^2, ...), made orthogonal to the modes before it, with ``power_fraction`` of the
    first mode's power; the total power is kept. Refinement (``infer --refine_probe``) then
    shapes them: a partially coherent beam is a sum of such modes' intensities.

    Shapes
    ------
    probe : (N, N) or (P, N, N) complex; returns (modes, N, N) complex64 (the first P kept)

    >>> p = add_probe_modes(make_probe("gaussian", 32), 3)
    >>> p.shape, round(float(np.sum(np.abs(p) ** 2)))
    ((3, 32, 32), 256)
    >>> abs(complex(np.vdot(p[0], p[1]))) < 1e-3
    True
    """
    p = np.asarray(probe, dtype=np.complex128)
    p = p[None] if p.ndim == 2 else p
    if modes < p.shape[0]:
        raise ConfigError(f"probe modes: the probe has {p.shape[0]}, asked for {modes}")
    n = p.shape[-1]
    total = float(np.sum(np.abs(p) ** 2))
    first = p[0]
    y, x = (np.mgrid[:n, :n] - n // 2) / (n / 4)
    shapes = [x, y, x * y, x**2 - y**2, x**2 + y**2 - 1, x**3, y**3]
    out = list(p)
    for shape in shapes[: max(0, modes - len(out))]:
        mode = first * shape
        for other in out:  # Gram-Schmidt against the modes before
            mode = mode - np.vdot(other, mode) / np.vdot(other, other) * other
        out.append(mode * math.sqrt(power_fraction * np.sum(np.abs(first) ** 2))
                   / max(math.sqrt(float(np.sum(np.abs(mode) ** 2))), 1e-30))  # fmt: skip
    if len(out) < modes:
        raise ConfigError(f"probe modes: at most {p.shape[0] + len(shapes)}, got {modes}")
    stack = np.stack(out)
    stack *= math.sqrt(total / float(np.sum(np.abs(stack) ** 2)))
    return stack.astype(np.complex64)


def make_scan_positions(
    kind: ScanKind,
    n_positions: int,
    step_px: float,
    rng: np.random.Generator,
    *,
    jitter_px: float = 0.0,
) -> np.ndarray:
    """Scan positions (y, x) in pixels, centred near 0.

    Parameters
    ----------
    kind : ``"raster"``: row-major grid, ``ceil(sqrt(M))`` columns, spacing ``step_px``.
        ``"spiral"``: Fermat spiral ``r_k = c sqrt(k + 1/2)`` at ``k`` golden angles, ``c``
        set so neighbours lie about ``step_px`` apart. ``"random"``: uniform in a square of
        side ``step_px * sqrt(M)`` (one position per ``step_px**2`` on average).
    n_positions : M.
    step_px : spacing of neighbouring positions in pixels.
    rng : source of randomness (random positions and jitter).
    jitter_px : standard deviation of Gaussian jitter added to each coordinate.

    Shapes
    ------
    returns (M, 2) float64, (y, x)

    >>> make_scan_positions("raster", 4, 2.0, np.random.default_rng(0)).tolist()
    [[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]
    """
    _check_kind("scan_kind", kind, ScanKind)
    if n_positions < 1 or not step_px > 0:
        raise ConfigError(
            f"scan: expected n_positions >= 1 and step_px > 0, got {n_positions} and {step_px}"
        )
    m = int(n_positions)
    if kind == "raster":
        n_cols = math.ceil(math.sqrt(m))
        rows, cols = np.divmod(np.arange(m), n_cols)  # (M,), (M,)
        positions = step_px * np.stack([rows - rows.max() / 2, cols - (n_cols - 1) / 2], axis=1)
    elif kind == "spiral":
        k = np.arange(m, dtype=np.float64)
        radius, angle = step_px / _SPIRAL_SPACING * np.sqrt(k + 0.5), k * _GOLDEN_ANGLE_RAD
        positions = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    else:
        positions = step_px * math.sqrt(m) * rng.uniform(-0.5, 0.5, size=(m, 2))
    return jitter_positions(positions, jitter_px, rng)


def jitter_positions(
    positions: np.ndarray, jitter_px: float, rng: np.random.Generator
) -> np.ndarray:
    """``positions`` (M, 2) plus Gaussian jitter of ``jitter_px`` (standard deviation, pixels)."""
    if not jitter_px >= 0:
        raise ConfigError(f"jitter_px: expected >= 0, got {jitter_px}")
    return positions + rng.normal(0.0, jitter_px, size=positions.shape) if jitter_px else positions
