"""Training for transfer: a measured scan plus scans simulated with its probe, positions and dose.

A network trained on one sample learns that sample. Trained on the measured scan together with
scans of many random objects (:func:`~ptychopinn.data.samples.training_object`: shapes,
power-law textures, lines, random fields; phase-only to strongly absorbing, random feature
size), each imaged with the scan's own probe, positions, mean counts, background and bad
pixels, it learns to invert the forward model of that instrument instead, and reconstructs
the next sample in one pass. ``ptychopinn train --synthetic_objects K`` does this.

Each simulated scan gets its own ``scan_index``, so no overlap group mixes two objects, and
the same mean total counts as the measured scan, so one normalisation and one Poisson scale
hold for all of them.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from ptychopinn.data.samples import training_object
from ptychopinn.data.simulate import _diffract, _photon_factor, _placement, _total_intensities
from ptychopinn.io.scan import ScanData, concatenate
from ptychopinn.resources import check_allocation

logger = logging.getLogger(__name__)

#: Patterns drawn from the Poisson distribution per batch.
_BATCH = 1024


def simulate_like(scan: ScanData, obj: np.ndarray, rng: np.random.Generator) -> ScanData:
    """A scan of ``obj`` taken as ``scan`` was: its probe, positions, mean counts (Poisson
    noise when it holds counts), background and bad pixels.

    ``obj`` must cover the scan's positions (see :func:`object_shape_for`).

    Shapes
    ------
    obj (Ho, Wo) complex64; returns a scan of ``scan.n_patterns`` patterns
    """
    offset, _ = _placement(scan.positions_px, scan.N, obj.shape)
    positions = scan.positions_px + offset  # (M, 2) on obj
    probe = np.asarray(scan.probe, dtype=np.complex64)  # (P, N, N)
    amplitude, _ = _diffract(obj, probe, positions, keep_patches=False)  # (M, N, N)
    factor = _photon_factor(_total_intensities(amplitude), scan.mean_total_intensity())
    diffraction: np.ndarray
    if scan.units == "counts":
        diffraction = np.empty(amplitude.shape, dtype=np.int32)
        for start in range(0, amplitude.shape[0], _BATCH):
            expected = factor * np.square(amplitude[start : start + _BATCH], dtype=np.float64)
            if scan.background is not None:
                expected += scan.background
            diffraction[start : start + _BATCH] = rng.poisson(expected).astype(np.int32)
    else:
        diffraction = amplitude * np.float32(np.sqrt(factor))
        if scan.background is not None:
            diffraction = np.sqrt(np.square(diffraction) + scan.background)
    return dataclasses.replace(
        scan,
        diffraction=diffraction,
        positions_px=positions,
        nominal_positions_px=None,
        object=obj,
        patches=None,
        source="simulated",
    )


def object_shape_for(scan: ScanData) -> tuple[int, int]:
    """The object size that covers ``scan``'s positions with the simulator's margin."""
    _, shape = _placement(scan.positions_px, scan.N, None)
    return shape


def with_synthetic(scan: ScanData, count: int, seed: int = 0) -> ScanData:
    """``scan`` plus ``count`` scans of random objects simulated as it was taken.

    The measured patterns come first with their scan indices; each simulated scan has a new
    one. The result's reference ``object`` is the measured scan's.

    Shapes
    ------
    returns a scan of ``(count + 1) * scan.n_patterns`` patterns, in memory
    """
    if count < 1:
        return scan
    n, m = scan.N, scan.n_patterns
    itemsize = np.dtype(np.int32 if scan.units == "counts" else np.float32).itemsize
    check_allocation(
        float(count + 1) * m * n * n * (itemsize + 4),
        f"synthetic_objects {count}: {count} simulated copies of a {m}-pattern scan in memory",
        None,
    )
    shape = object_shape_for(scan)
    rng = np.random.default_rng([seed, 0x5EED])
    first = int(np.max(np.asarray(scan.scan_index))) + 1  # the measured scan's objects keep theirs
    scans = [scan]
    for k in range(count):
        simulated = simulate_like(scan, training_object(shape, rng), rng)
        index = np.full(m, first + k, dtype=np.int64)
        scans.append(dataclasses.replace(simulated, scan_index=index))
    logger.info(
        "training on %s plus %d scans of random objects simulated with its probe, positions "
        "and %.3g counts per pattern (%d patterns)",
        scan.source,
        count,
        scan.mean_total_intensity(),
        (count + 1) * m,
    )
    out = concatenate(scans)
    return dataclasses.replace(out, object=scan.object, source=scan.source)
