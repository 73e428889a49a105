"""Simulated scans: Poisson-noisy diffraction of the test objects, probes and scan paths of
:mod:`ptychopinn.data.samples`, with their ground truth.

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
from typing import Any

import numpy as np
import torch

from ptychopinn.data.samples import (
    ObjectKind,
    ProbeKind,
    ScanKind,
    jitter_positions,
    make_object,
    make_probe,
    make_scan_positions,
)
from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import SHIFT_MARGIN_PX, extract_patches, far_field_amplitude
from ptychopinn.resources import check_allocation

logger = logging.getLogger(__name__)


#: Patterns simulated per batch.
BATCH_SIZE = 1024
#: Ground-truth patches ``Y`` are kept when they take fewer bytes than this.
PATCHES_LIMIT_BYTES = 512 * 1024**2
#: Object pixels beyond the outermost patch on every side of a derived object.
OBJECT_MARGIN_PX = 2 * SHIFT_MARGIN_PX
#: Largest expected photon count of a pattern, so int32 counts cannot overflow.
_MAX_EXPECTED_COUNT = 2.0e9


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
    max_memory_gb: float | None = None,
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
    max_memory_gb : budget of the object's allocation (default: half the memory); a step or
        jitter that would need more is refused before anything is allocated.

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
        max_memory_gb=max_memory_gb,
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
    max_memory_gb: float | None = None,
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
        max_memory_gb=max_memory_gb,
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
    max_memory_gb: float | None = None,
    jitter_px: float,
) -> _Setup:
    if photons_per_pattern is not None and not photons_per_pattern > 0:
        raise ConfigError(f"photons_per_pattern: expected > 0 or None, got {photons_per_pattern}")
    obj_rng, scan_rng, noise_rng = map(np.random.default_rng, np.random.SeedSequence(seed).spawn(3))
    probe_modes = make_probe(probe_kind, n)[None] if probe is None else _probe_from_array(probe, n)
    step = n / 10 if step_px is None else float(step_px)
    nominal = make_scan_positions(scan_kind, n_positions, step, scan_rng)  # (M, 2)
    positions = jitter_positions(nominal, jitter_px, scan_rng)  # (M, 2)
    offset, shape = _placement(positions, n, object_size)
    # the object and a few float64 work arrays of its size (the GRF's spectrum, the image fit)
    check_allocation(
        6 * 16 * float(shape[0]) * float(shape[1]),
        f"simulate: a {shape[0]} x {shape[1]} px object for the scan's span (step, jitter)",
        max_memory_gb,
    )
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
