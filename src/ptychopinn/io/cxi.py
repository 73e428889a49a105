"""CXI files (Coherent X-ray Imaging format, the NXcxi_ptycho layout): read and write.

The layout most beamlines, ptypy, PtychoShelves and Ptychodus write:

* patterns: ``/entry_1/data_1/data`` (often a link to
  ``/entry_1/instrument_1/detector_1/data``), (M, H, W) detector counts, zero frequency near
  the array centre;
* positions: ``/entry_1/sample_1/geometry_1/translation`` (or ``/entry_1/data_1/translation``,
  ``/entry_1/instrument_1/detector_1/translation``), (M, 3) x, y, z in metres. They are read as
  the probe's positions on the sample, as Ptychodus reads them;
* probe: ``/entry_1/probe``, ``/entry_1/instrument_1/source_1/illumination`` or
  ``/entry_1/instrument_1/source_1/probe``, (H, W), (P, H, W) or (1, P, H, W) complex;
* geometry: ``/entry_1/instrument_1/source_1/energy`` [J], ``.../detector_1/distance`` [m],
  ``.../detector_1/x_pixel_size`` and ``y_pixel_size`` [m]; ``.../detector_1/mask``, nonzero
  at bad pixels.

The object pixel size is ``lambda z / (H p)`` (:mod:`ptychopinn.io.units`); positions become
object pixels, shifted so the scan starts half a pattern from the object's corner (the shift,
in metres, is kept in the metadata and restored on writing). A file without energy, distance
and pixel size can still be read when it carries ``/entry_1/ptychopinn/object_pixel_size_m``
(what :func:`write_cxi` writes when the geometry is unknown).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.hdf5 import WRITE_BATCH, H5Array, _h5py, check_stored_inside, open_h5
from ptychopinn.io.paths import check_regular_file
from ptychopinn.io.scan import ScanData
from ptychopinn.io.units import ELECTRON_VOLT_J, object_pixel_size_m

logger = logging.getLogger(__name__)

DATA_PATHS = ("entry_1/data_1/data", "entry_1/instrument_1/detector_1/data")
TRANSLATION_PATHS = (
    "entry_1/sample_1/geometry_1/translation",
    "entry_1/data_1/translation",
    "entry_1/instrument_1/detector_1/translation",
)
PROBE_PATHS = (
    "entry_1/probe",
    "entry_1/instrument_1/source_1/illumination",
    "entry_1/instrument_1/source_1/probe",
)
ENERGY = "entry_1/instrument_1/source_1/energy"
DISTANCE = "entry_1/instrument_1/detector_1/distance"
PIXEL_X = "entry_1/instrument_1/detector_1/x_pixel_size"
PIXEL_Y = "entry_1/instrument_1/detector_1/y_pixel_size"
MASK = "entry_1/instrument_1/detector_1/mask"
OBJECT = "entry_1/image_2/data"
OWN_PIXEL_SIZE = "entry_1/ptychopinn/object_pixel_size_m"
OWN_ORIGIN = "entry_1/ptychopinn/origin_m"
CXI_VERSION = 150


def is_cxi(path: str | os.PathLike[str]) -> bool:
    """A ``.cxi`` file, or an HDF5 file with an ``entry_1`` group holding patterns."""
    p = Path(path)
    if p.suffix == ".cxi":
        return True
    if p.suffix not in (".h5", ".hdf5", ".nxs") or not p.is_file():
        return False
    try:
        with _h5py().File(p, "r") as f:
            return "entry_1" in f and any(key in f for key in DATA_PATHS)
    except OSError:
        return False


def pattern_size(path: str | os.PathLike[str]) -> int:
    """The pattern width of a CXI file (for a probe given at another size)."""
    with _h5py().File(check_regular_file(path, "a CXI file"), "r") as f:
        key = _first(f, DATA_PATHS)
        if key is None:
            raise DataError(f"{path}: no patterns at /{' or /'.join(DATA_PATHS)}")
        return int(f[key].shape[-1])


def _first(f: Any, paths: tuple[str, ...]) -> str | None:
    return next((key for key in paths if key in f), None)


def _scalar(f: Any, key: str) -> float | None:
    if key not in f:
        return None
    value = np.asarray(f[key][()])
    if value.size != 1 or value.dtype.kind not in "uif":
        return None
    return float(value.reshape(()))


def cxi_geometry(f: Any) -> dict[str, float]:
    """The energy [eV], distance [m] and detector pixel size [m] a CXI file gives (each if any)."""
    out: dict[str, float] = {}
    energy_j = _scalar(f, ENERGY)
    if energy_j:
        out["photon_energy_eV"] = energy_j / ELECTRON_VOLT_J
    distance = _scalar(f, DISTANCE)
    if distance:
        out["detector_distance_m"] = distance
    px, py = _scalar(f, PIXEL_X), _scalar(f, PIXEL_Y)
    if px and py:
        if abs(px / py - 1) > 1e-6:
            raise DataError(f"detector pixels {px:.4g} x {py:.4g} m: expected square pixels")
        out["detector_pixel_m"] = px
    return out


def read_cxi(
    path: str | os.PathLike[str], units: str = "auto", probe: np.ndarray | None = None
) -> ScanData:
    """Read a CXI scan; the patterns stay on disk.

    Parameters
    ----------
    path : the ``.cxi`` (or NeXus/HDF5) file
    units : ``auto`` or ``counts`` (CXI patterns are detector counts)
    probe : (P, H, W) complex, used when the file holds none (or instead of its own)
    """
    p = check_regular_file(path, "a CXI file")
    if units == "amplitude":
        raise ConfigError(f"{p}: CXI patterns are detector counts; amplitude units do not apply")
    h5py = _h5py()
    with open_h5(p) as f:
        data_key = _first(f, DATA_PATHS)
        if data_key is None:
            raise DataError(f"{p}: no patterns at /{' or /'.join(DATA_PATHS)}")
        ds = f[data_key]
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
            raise DataError(f"{p}: /{data_key}: expected an (M, H, W) dataset")
        check_stored_inside(p, data_key, ds)
        m, h, w = (int(v) for v in ds.shape)
        trans_key = _first(f, TRANSLATION_PATHS)
        if trans_key is None:
            raise DataError(f"{p}: no positions at /{' or /'.join(TRANSLATION_PATHS)}")
        translation = np.asarray(f[trans_key][()], dtype=np.float64)
        if translation.ndim != 2 or translation.shape[0] != m or translation.shape[1] < 2:
            raise DataError(
                f"{p}: /{trans_key}: expected ({m}, 3) x, y, z in metres to match the {m} "
                f"patterns, got shape {translation.shape}"
            )
        geometry = cxi_geometry(f)
        own = _scalar(f, OWN_PIXEL_SIZE)
        probe_key = _first(f, PROBE_PATHS)
        if probe is None:
            if probe_key is None:
                raise DataError(
                    f"{p}: no probe at /{' or /'.join(PROBE_PATHS)}: give one "
                    "(ptychopinn convert --probe FILE)"
                )
            probe = np.asarray(f[probe_key][()])
        bad = np.asarray(f[MASK][()]) != 0 if MASK in f else None
        origin = np.asarray(f[OWN_ORIGIN][()], dtype=np.float64) if OWN_ORIGIN in f else None
        # the object is a reference only in our own files, whose positions are on its grid
        reference = np.asarray(f[OBJECT][()]) if origin is not None and OBJECT in f else None
    if {"photon_energy_eV", "detector_distance_m", "detector_pixel_m"} <= set(geometry):
        pixel = object_pixel_size_m(
            geometry["photon_energy_eV"], geometry["detector_distance_m"],
            geometry["detector_pixel_m"], h,
        )  # fmt: skip
    elif own:
        pixel = own
    else:
        raise DataError(
            f"{p}: the positions are in metres but the file lacks the energy, detector distance "
            f"or pixel size that give the object pixel size (found {sorted(geometry) or 'none'})"
        )
    yx_m = translation[:, [1, 0]]
    if origin is None or origin.shape != (2,):
        origin = yx_m.min(axis=0) - (h // 2) * pixel
    positions = (yx_m - origin) / pixel
    logger.info(
        "%s: %d patterns of %dx%d counts, object pixel %.4g m; positions from /%s "
        "(x, y in metres, read as the probe's positions)",
        p, m, h, w, pixel, trans_key,
    )  # fmt: skip
    return ScanData(
        diffraction=H5Array(p, data_key),
        units="counts",
        positions_px=positions,
        probe=probe,
        object=reference,
        bad_pixels=bad,
        pixel_size_m=pixel,
        source=str(p),
        metadata={"cxi": {"origin_m": origin.tolist(), "data": data_key}, "geometry": geometry},
    )


def write_cxi(
    path: str | os.PathLike[str], scan: ScanData, geometry: dict[str, float] | None = None
) -> None:
    """Write a scan as a CXI file (atomically; patterns copied in batches).

    ``geometry`` (``photon_energy_eV``, ``detector_distance_m``, ``detector_pixel_m``) is
    written when known (default: ``scan.metadata["geometry"]``, what the scan was read or
    converted with); positions need the object pixel size (``scan.pixel_size_m``) to be
    written in metres.
    """
    if scan.pixel_size_m is None:
        raise ConfigError(
            f"{path}: CXI positions are in metres: the scan's object pixel size is unknown "
            "(give --pixel_size_m, or the energy, distance and detector pixel size)"
        )
    known = dict(scan.metadata.get("geometry") or {}) if geometry is None else geometry
    pixel = scan.pixel_size_m
    n = scan.N
    origin = np.asarray((scan.metadata.get("cxi") or {}).get("origin_m", (0.0, 0.0)), float)
    yx_m = scan.positions_px * pixel + origin
    translation = np.zeros((scan.n_patterns, 3))
    translation[:, 0], translation[:, 1] = yx_m[:, 1], yx_m[:, 0]
    counts = scan.units == "counts"
    dtype = np.dtype(scan.diffraction.dtype) if counts else np.dtype(np.float32)
    h5py = _h5py()
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["cxi_version"] = CXI_VERSION
        f["entry_1/start_time"] = np.bytes_(np.datetime_as_string(np.datetime64("now")))
        rows = max(1, min(scan.n_patterns, (4 << 20) // (n * n * dtype.itemsize)))
        ds = f.create_dataset(
            "entry_1/instrument_1/detector_1/data", shape=(scan.n_patterns, n, n), dtype=dtype,
            chunks=(rows, n, n),
        )  # fmt: skip
        batch = max(1, min(WRITE_BATCH, (256 << 20) // (n * n * 8)))
        for start in range(0, scan.n_patterns, batch):
            block = np.asarray(scan.diffraction[start : start + batch])
            # CXI holds intensities: amplitudes are squared
            ds[start : start + len(block)] = block if counts else block.astype(np.float32) ** 2
        f["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        f["entry_1/sample_1/geometry_1/translation"] = translation
        f["entry_1/data_1/translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
        f["entry_1/instrument_1/source_1/illumination"] = scan.probe
        f["entry_1/probe"] = h5py.SoftLink("/entry_1/instrument_1/source_1/illumination")
        if scan.bad_pixels is not None:
            f[MASK] = scan.bad_pixels.astype(np.uint32)  # bit 0: pixel is invalid
        if "photon_energy_eV" in known:
            f[ENERGY] = known["photon_energy_eV"] * ELECTRON_VOLT_J
        if "detector_distance_m" in known:
            f[DISTANCE] = known["detector_distance_m"]
        if "detector_pixel_m" in known:
            f[PIXEL_X] = f[PIXEL_Y] = known["detector_pixel_m"]
        f[OWN_PIXEL_SIZE] = pixel
        f[OWN_ORIGIN] = origin
        if scan.object is not None:  # image_2, as Ptychodus writes it (its image_1: the probe)
            f[OBJECT] = scan.object
            f["entry_1/image_2/data_type"] = np.bytes_("transmission function")
            f["entry_1/image_2/data_space"] = np.bytes_("real")
