"""The tike / pty-chi NPZ layout: ``data``, ``scan``, ``probe``.

* ``data`` (M, H, W): measured intensities. tike keeps the zero frequency in the array corner
  (FFT order); whichever it is, the reader measures it against the probe's far field and
  fftshifts patterns found in corner order, saying so;
* ``scan`` (M, 2): positions in object pixels, (y, x) = (row, column), of the probe window's
  minimum corner (tike's convention; ``positions="centre"`` reads them as window centres, as
  pty-chi's centred coordinates are);
* ``probe`` (..., P, H, W) complex: leading axes of length 1 (tike's position and eigen axes,
  pty-chi's OPR axis) are dropped; P incoherent modes.

Our positions are window centres: ``centre = corner + N // 2``. Positions are shifted, when
needed, so that no window starts left of or above the object's pixel 0.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Literal

import numpy as np

from ptychopinn.errors import DataError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.detector import LazyPatterns
from ptychopinn.io.scan import ScanData

logger = logging.getLogger(__name__)

PositionsAt = Literal["corner", "centre"]


def is_tike_layout(keys: Any) -> bool:
    """NPZ keys of the tike / pty-chi layout (and none of the scan NPZ's patterns)."""
    keys = set(keys)
    return {"data", "scan", "probe"} <= keys and not keys & {"diffraction", "diff3d"}


def fftshifted(patterns: np.ndarray) -> np.ndarray:
    """Patterns (..., N, N) in FFT order -> zero frequency at N // 2 (and back for even N)."""
    return np.fft.fftshift(patterns, axes=(-2, -1))


def scan_from_tike(
    arrays: dict[str, Any], source: str, positions: PositionsAt = "corner"
) -> ScanData:
    """A validated scan from tike / pty-chi arrays (see the module docstring)."""
    data = arrays["data"]
    if len(data.shape) != 3:
        raise DataError(f"{source}: data: expected (M, H, W) intensities, got {data.shape}")
    m, n = int(data.shape[0]), int(data.shape[-1])
    scan_yx = np.asarray(arrays["scan"], dtype=np.float64)
    if scan_yx.ndim == 3 and scan_yx.shape[0] == 1:  # tike's leading view axis
        scan_yx = scan_yx[0]
    if scan_yx.shape != (m, 2):
        raise DataError(
            f"{source}: scan: expected ({m}, 2) (y, x) positions for the {m} patterns, got "
            f"{scan_yx.shape}"
        )
    probe = np.asarray(arrays["probe"])
    if probe.ndim < 2 or int(np.prod(probe.shape[:-3] or (1,))) != 1:
        raise DataError(
            f"{source}: probe: expected (..., P, H, W) with leading axes of length 1 (one "
            f"probe for the whole scan), got {probe.shape}"
        )
    probe = probe.reshape(-1, *probe.shape[-2:])
    centres = scan_yx + (n // 2 if positions == "corner" else 0)
    shift = np.maximum(0.0, n // 2 - centres.min(axis=0))
    if shift.any():
        logger.info("%s: positions shifted by (%.1f, %.1f) px onto the object", source, *shift)
    scan = ScanData(
        diffraction=data,
        units="counts",
        positions_px=centres + shift,
        probe=probe,
        source=source,
        metadata={"tike": {"positions": positions, "shift_px": shift.tolist()}},
    )
    from ptychopinn.io.summary import diffraction_geometry

    if diffraction_geometry(scan).corner:
        logger.info("%s: data hold the zero frequency in the array corner: fftshifted", source)
        shifted = LazyPatterns(data, fftshifted, n, data.dtype)
        meta = {"tike": {**scan.metadata["tike"], "zero_frequency": "corner (fftshifted)"}}
        return dataclasses.replace(scan, diffraction=shifted, metadata=meta)
    return scan


def write_tike_npz(path: str | os.PathLike[str], scan: ScanData) -> None:
    """Write the scan in the tike layout: intensities in FFT order, corner positions (y, x)."""
    intensity = scan.amplitudes().astype(np.float32) ** 2
    n = scan.N
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            data=np.fft.ifftshift(intensity, axes=(-2, -1)),
            scan=(scan.positions_px - n // 2).astype(np.float32),
            probe=scan.probe[None, None].astype(np.complex64),
        )
