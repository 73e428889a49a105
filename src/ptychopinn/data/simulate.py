"""Simulated scans: test objects, probes, scan paths and Poisson-noisy diffraction.

Diffraction comes from the model's own forward model (``extract_patches`` at sub-pixel
positions, then ``far_field_amplitude``), so reconstructions assume exactly the physics that
made the data. One ``seed`` feeds independent streams for the object, the scan path and the
noise: changing the photon count leaves object and positions unchanged.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch

from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import (
    SHIFT_MARGIN_PX,
    extract_patches,
    far_field_amplitude,
    ifft2c,
)

logger = logging.getLogger(__name__)

ObjectKind = Literal["lines", "grf", "image"]
ProbeKind = Literal["disk", "gaussian"]
ScanKind = Literal["raster", "spiral", "random"]

#: Patterns simulated per batch.
BATCH_SIZE = 1024
#: Ground-truth patches ``Y`` are kept when they take fewer bytes than this.
PATCHES_LIMIT_BYTES = 512 * 1024**2
#: Object pixels beyond the outermost patch on every side of a derived object.
OBJECT_MARGIN_PX = 2 * SHIFT_MARGIN_PX
#: Largest expected photon count of a pattern, so int32 counts cannot overflow.
_MAX_EXPECTED_COUNT = 2.0e9
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
        :data:`IMAGE_PAIRS`), centre-cropped and resized (``rng`` unused).
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
    return _jitter(positions, jitter_px, rng)


def _jitter(positions: np.ndarray, jitter_px: float, rng: np.random.Generator) -> np.ndarray:
    if not jitter_px >= 0:
        raise ConfigError(f"jitter_px: expected >= 0, got {jitter_px}")
    return positions + rng.normal(0.0, jitter_px, size=positions.shape) if jitter_px else positions


def simulate_scan(
    *,
    n: int = 64,
    object_kind: ObjectKind = "grf",
    probe_kind: ProbeKind = "disk",
    scan_kind: ScanKind = "raster",
    n_positions: int = 256,
    step_px: float | None = None,
    photons_per_pattern: float | None = 1e6,
    seed: int = 0,
    probe: np.ndarray | None = None,
    object_size: tuple[int, int] | None = None,
    jitter_px: float = 0.5,
) -> ScanData:
    """Simulate a scan of a random object, with its ground truth.

    Parameters
    ----------
    n : pattern size N.
    object_kind, probe_kind, scan_kind : see :func:`make_object`, :func:`make_probe`,
        :func:`make_scan_positions` (default parameters).
    n_positions : number of patterns M.
    step_px : scan step, default ``n / 10`` (70 % linear overlap of the default probe).
    photons_per_pattern : mean total count per pattern, giving Poisson counts (int32,
        ``units="counts"``); ``None``: noise-free float32 amplitudes (``units="amplitude"``).
    seed : seeds the object, the scan path and the noise (independent streams).
    probe : (N, N) or (P, N, N) complex probe to use instead of ``probe_kind``.
    object_size : (Ho, Wo); default: the span of the positions + N + ``OBJECT_MARGIN_PX``
        on each side. The scan is centred on the object.
    jitter_px : standard deviation of the Gaussian position error added to the nominal path.

    The returned scan holds ``object``, ``patches`` (``Y``, kept below ``PATCHES_LIMIT_BYTES``)
    and ``nominal_positions_px`` (no jitter); its probe is scaled so that
    ``far_field_amplitude(probe, Y)**2`` are the expected counts. For scans larger than
    memory see :func:`write_simulated_scan_h5`, which gives the same patterns.

    Shapes
    ------
    diffraction (M, N, N); positions_px (M, 2); probe (P, N, N); object (Ho, Wo)
    """
    setup = _prepare(
        n=n,
        object_kind=object_kind,
        probe_kind=probe_kind,
        scan_kind=scan_kind,
        n_positions=n_positions,
        step_px=step_px,
        photons_per_pattern=photons_per_pattern,
        seed=seed,
        probe=probe,
        object_size=object_size,
        jitter_px=jitter_px,
    )
    m = setup.positions.shape[0]
    keep_patches = m * n * n * 8 < PATCHES_LIMIT_BYTES
    amplitude, patches = _diffract(setup.object, setup.probe, setup.positions, keep_patches)
    probe_modes = setup.probe
    if photons_per_pattern is None:
        diffraction = amplitude
    else:
        factor = _photon_factor(_total_intensities(amplitude), photons_per_pattern)
        diffraction = np.empty(amplitude.shape, dtype=np.int32)
        for start in range(0, m, BATCH_SIZE):
            block = slice(start, start + BATCH_SIZE)
            diffraction[block] = _poisson_counts(amplitude[block], factor, setup.noise_rng)
        probe_modes = probe_modes * np.float32(math.sqrt(factor))
    logger.info(
        "simulated %d patterns of %dx%d on a %s object: %s",
        m,
        n,
        n,
        setup.object.shape,
        setup.metadata,
    )
    return ScanData(
        diffraction=diffraction,
        units="amplitude" if photons_per_pattern is None else "counts",
        positions_px=setup.positions,
        probe=probe_modes,
        object=setup.object,
        nominal_positions_px=setup.nominal,
        scan_index=np.zeros(m, dtype=np.int64),
        patches=patches,
        source="simulated",
        metadata=setup.metadata,
    )


def write_simulated_scan_h5(
    path: str | os.PathLike[str],
    *,
    n: int = 64,
    object_kind: ObjectKind = "grf",
    probe_kind: ProbeKind = "disk",
    scan_kind: ScanKind = "raster",
    n_positions: int = 256,
    step_px: float | None = None,
    photons_per_pattern: float | None = 1e6,
    seed: int = 0,
    probe: np.ndarray | None = None,
    object_size: tuple[int, int] | None = None,
    jitter_px: float = 0.5,
) -> dict[str, Any]:
    """Simulate a scan straight into a chunked HDF5 scan (:mod:`ptychopinn.io.hdf5`).

    Takes the arguments of :func:`simulate_scan` and writes the same patterns, positions,
    probe and object (no ``Y``), :data:`BATCH_SIZE` patterns at a time: memory holds the
    object, the positions and one batch, whatever the number of patterns. With Poisson
    noise the amplitudes are computed twice (a first pass fixes the photon scale).
    Returns the simulation's metadata (with ``n_patterns`` and ``object_shape``).

    Shapes
    ------
    writes diffraction (M, N, N), xcoords/ycoords (M,), probeGuess (N, N) or (P, N, N),
    objectGuess (Ho, Wo)
    """
    from ptychopinn.io.hdf5 import scan_h5_writer

    setup = _prepare(
        n=n,
        object_kind=object_kind,
        probe_kind=probe_kind,
        scan_kind=scan_kind,
        n_positions=n_positions,
        step_px=step_px,
        photons_per_pattern=photons_per_pattern,
        seed=seed,
        probe=probe,
        object_size=object_size,
        jitter_px=jitter_px,
    )
    m = setup.positions.shape[0]
    probe_modes = setup.probe
    factor = 1.0
    if photons_per_pattern is not None:
        totals = np.concatenate(
            [
                _total_intensities(amplitude)
                for amplitude, _ in _amplitude_batches(setup.object, probe_modes, setup.positions)
            ]
        )  # (M,)
        factor = _photon_factor(totals, photons_per_pattern)
        probe_modes = probe_modes * np.float32(math.sqrt(factor))
    with scan_h5_writer(
        path,
        n_patterns=m,
        n=n,
        dtype=np.float32 if photons_per_pattern is None else np.int32,
        units="amplitude" if photons_per_pattern is None else "counts",
        positions_px=setup.positions,
        probe=probe_modes,
        object=setup.object,
        nominal_positions_px=setup.nominal,
        scan_index=np.zeros(m, dtype=np.int64),
    ) as sink:
        for amplitude, _ in _amplitude_batches(setup.object, setup.probe, setup.positions):
            if photons_per_pattern is None:
                sink.append(amplitude)
            else:
                sink.append(_poisson_counts(amplitude, factor, setup.noise_rng))
    logger.info(
        "simulated %d patterns of %dx%d on a %s object into %s: %s",
        m,
        n,
        n,
        setup.object.shape,
        path,
        setup.metadata,
    )
    return {**setup.metadata, "n_patterns": m, "N": n, "object_shape": setup.object.shape}


@dataclass(frozen=True)
class _Setup:
    """Everything of a simulated scan but its diffraction (the probe not yet scaled)."""

    object: np.ndarray  # (Ho, Wo) complex64
    probe: np.ndarray  # (P, N, N) complex64
    positions: np.ndarray  # (M, 2)
    nominal: np.ndarray  # (M, 2)
    noise_rng: np.random.Generator
    metadata: dict[str, Any]


def _prepare(
    *,
    n: int,
    object_kind: ObjectKind,
    probe_kind: ProbeKind,
    scan_kind: ScanKind,
    n_positions: int,
    step_px: float | None,
    photons_per_pattern: float | None,
    seed: int,
    probe: np.ndarray | None,
    object_size: tuple[int, int] | None,
    jitter_px: float,
) -> _Setup:
    if photons_per_pattern is not None and not photons_per_pattern > 0:
        raise ConfigError(f"photons_per_pattern: expected > 0 or None, got {photons_per_pattern}")
    obj_rng, scan_rng, noise_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(3))
    probe_modes = make_probe(probe_kind, n)[None] if probe is None else _probe_from_array(probe, n)
    step = n / 10 if step_px is None else float(step_px)
    nominal = make_scan_positions(scan_kind, n_positions, step, scan_rng)  # (M, 2)
    positions = _jitter(nominal, jitter_px, scan_rng)  # (M, 2)
    offset, shape = _placement(positions, n, object_size)
    obj = make_object(object_kind, shape, obj_rng, image_pair=seed)
    metadata = {
        "object_kind": object_kind,
        "probe_kind": probe_kind if probe is None else "given",
        "scan_kind": scan_kind,
        "photons_per_pattern": photons_per_pattern,
        "step_px": step,
        "jitter_px": jitter_px,
        "seed": seed,
    }
    return _Setup(obj, probe_modes, positions + offset, nominal + offset, noise_rng, metadata)


def _total_intensities(amplitude: np.ndarray) -> np.ndarray:
    """Summed intensity per pattern (B,) float64 of amplitudes (B, N, N)."""
    return np.sum(np.square(amplitude, dtype=np.float64), axis=(1, 2))


def _photon_factor(totals: np.ndarray, photons_per_pattern: float) -> float:
    """Scale of the intensities giving ``photons_per_pattern`` on average (totals: (M,))."""
    factor = photons_per_pattern / float(totals.mean())
    if factor * totals.max() > _MAX_EXPECTED_COUNT:
        raise ConfigError(f"photons_per_pattern: {photons_per_pattern:g} overflows int32")
    return factor


def _poisson_counts(
    amplitude: np.ndarray, factor: float, noise_rng: np.random.Generator
) -> np.ndarray:
    """Poisson counts (B, N, N) int32 with mean ``factor * amplitude**2``."""
    expected = factor * np.square(amplitude, dtype=np.float64)  # (B, N, N)
    return noise_rng.poisson(expected).astype(np.int32)


def _probe_from_array(probe: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(probe)
    arr = arr[None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[1:] != (n, n) or not np.all(np.isfinite(arr)) or not arr.any():
        raise DataError(
            f"probe: expected finite, not all zero, shape ({n}, {n}) or (P, {n}, {n}); "
            f"got shape {arr.shape}"
        )
    return arr.astype(np.complex64)


def _placement(
    positions: np.ndarray, n: int, object_size: tuple[int, int] | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """Integer offset (2,) that puts every patch on the object, and the object shape."""
    lo = np.floor(positions.min(axis=0))
    span = np.ceil(positions.max(axis=0)) - lo + n  # (2,) pixels covered by patches
    if object_size is None:
        shape = tuple(int(v) for v in span + 2 * OBJECT_MARGIN_PX)
    else:
        shape = tuple(int(v) for v in object_size)
        if len(shape) != 2 or shape[0] < span[0] or shape[1] < span[1]:
            raise ConfigError(
                f"object_size: the scan needs at least ({int(span[0])}, {int(span[1])}), "
                f"got {tuple(object_size)}"
            )
    spare = (np.asarray(shape) - span) // 2  # (2,) centres the scan
    return n // 2 - lo + spare, (shape[0], shape[1])


def _amplitude_batches(
    obj: np.ndarray, probe: np.ndarray, positions: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Noise-free amplitudes (B, N, N) float32 and patches (B, N, N) complex64, B =
    :data:`BATCH_SIZE` patterns at a time (fewer in the last batch)."""
    m, n = positions.shape[0], probe.shape[-1]
    canvas = torch.from_numpy(obj)[None]  # (1, Ho, Wo)
    probe_t = torch.from_numpy(probe)  # (P, N, N)
    for start in range(0, m, BATCH_SIZE):
        with torch.no_grad(), _one_thread():
            pos = torch.from_numpy(positions[start : start + BATCH_SIZE])[None]  # (1, B, 2)
            patch = extract_patches(canvas, pos, n)[0]  # (B, N, N)
            amplitude = far_field_amplitude(probe_t, patch).numpy()
        yield amplitude, patch.numpy()


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: the same seed then gives the same counts on every run.

    With several threads, MKL's FFT may use fewer of them when the machine is busy, and the
    float32 amplitudes then differ in their last bits from run to run; Poisson sampling turns
    such a difference into different counts (numpy's sampler draws a variable number of
    uniforms per count, so the rest of the stream shifts too). Seen: half the counts of a
    64-pattern scan differed between two runs with the same seed on a loaded 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _diffract(
    obj: np.ndarray, probe: np.ndarray, positions: np.ndarray, keep_patches: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Noise-free amplitudes (M, N, N) float32 and, if asked, the patches (M, N, N) complex64."""
    m, n = positions.shape[0], probe.shape[-1]
    amplitude = np.empty((m, n, n), dtype=np.float32)
    patches = np.empty((m, n, n), dtype=np.complex64) if keep_patches else None
    start = 0
    for amp, patch in _amplitude_batches(obj, probe, positions):
        block = slice(start, start + amp.shape[0])
        amplitude[block] = amp
        if patches is not None:
            patches[block] = patch
        start = block.stop
    return amplitude, patches
