"""Raw beamline files read through Ptychodus's own readers (``ptychopinn convert --reader``).

Ptychodus 1.7.0 ships readers for the files beamlines write (APS 2-ID, 12-ID, 19-ID, 26-ID,
31-ID LamNI, 33-ID Velociprobe, 4-ID POLAR, 9-ID CSSI, NSLS-II HXN, MAX IV NanoMAX, SLS
cSAXS, LCLS XPP, fold_slice, TIFF stacks, ...). Each plugin has a short name
(``NSLS_II_1``, ``APS_Velociprobe``, ``CXI``, ...): a diffraction reader gives the patterns
with their indexes and whatever geometry the file records, a position reader the probe
positions in metres with the same indexes, a probe reader the probe. This module turns their
answer into a :class:`~ptychopinn.io.scan.ScanData`:

* patterns and positions are paired by index, as Ptychodus pairs them; patterns without a
  position (and positions without a pattern) are left out and counted in the log;
* positions are read as the probe's positions on the sample (Ptychodus's meaning, the same as
  a CXI file's translations) and become object pixels of ``lambda z / (H p)`` from the
  file's energy, distance and detector pixel, or from the values given (given ones win);
* the patterns stay in the reader's arrays, read one array at a time as they are used
  (memory: one of the reader's arrays, as in Ptychodus);
* the file's bad-pixel mask is kept; its beam centre, if recorded, is logged next to the one
  ``convert`` measures.

Ptychodus is an optional dependency (``pip install ptychopinn[ptychodus]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.detector import RowArray
from ptychopinn.io.units import object_pixel_size_m

logger = logging.getLogger(__name__)

#: Geometry keys a scan's metadata carries (the ones ``convert`` takes as flags).
GEOMETRY_KEYS = ("photon_energy_eV", "detector_distance_m", "detector_pixel_m")


@dataclass(frozen=True)
class BeamlineFiles:
    """What to read: the patterns' file and reader, and where the positions come from.

    positions_path : default the patterns' file
    positions_reader : Ptychodus plugin name (default: the patterns' reader)
    geometry : energy [eV], distance [m], detector pixel [m] over the file's own values
    pixel_size_m : the object pixel size, instead of the geometry
    """

    path: Path
    reader: str
    positions_path: Path | None = None
    positions_reader: str | None = None
    geometry: dict[str, float] | None = None
    pixel_size_m: float | None = None


def _registry() -> Any:
    try:
        from ptychodus.api.plugins import PluginRegistry
    except ImportError as exc:
        raise ConfigError(
            "--reader reads beamline files with Ptychodus's readers: install it "
            "(pip install 'ptychopinn[ptychodus]')"
        ) from exc
    return PluginRegistry.load_plugins()


def reader_names(kind: str = "diffraction") -> list[str]:
    """Short names of Ptychodus's readers of ``kind`` (diffraction, positions, probe)."""
    return sorted(p.simple_name for p in _chooser(_registry(), kind))


def _chooser(registry: Any, kind: str) -> Any:
    attr = {
        "diffraction": "diffraction_file_readers",
        "positions": "probe_position_file_readers",
        "probe": "probe_file_readers",
    }[kind]
    return getattr(registry, attr)


def _strategy(registry: Any, kind: str, name: str, required: bool = True) -> Any:
    chooser = _chooser(registry, kind)
    plugin = chooser.find_plugin(name)
    if plugin is None:
        if not required:
            return None
        names = ", ".join(sorted(p.simple_name for p in chooser))
        raise ConfigError(f"no Ptychodus {kind} reader named {name!r}; it has: {names}")
    return plugin.strategy


def _read(strategy: Any, path: Path, what: str, name: str) -> Any:
    """A reader's answer; its failure (a file of another layout) as one line."""
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    try:
        return strategy.read(path)
    except Exception as exc:  # a plugin raises whatever its parser raises
        detail = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:200]
        raise DataError(
            f"{path}: Ptychodus's {name} reader could not read the {what} ({detail}); "
            "is it the layout that reader expects?"
        ) from exc


class PtychodusPatterns(RowArray):
    """Array-like (M, H, W) over a Ptychodus dataset's arrays, one array loaded at a time.

    ``rows`` (M, 2) names, for each kept pattern, its array and its row within that array;
    ``window`` the (rows, columns) of the detector kept.
    """

    def __init__(
        self, arrays: list[Any], rows: np.ndarray, window: tuple[slice, slice], dtype: Any
    ):
        self.arrays, self.rows, self.window = arrays, rows, window
        height, width = (s.stop - s.start for s in window)
        self.shape = (int(len(rows)), int(height), int(width))
        self.dtype = np.dtype(dtype)
        self._cached: tuple[int, np.ndarray] | None = None

    def _array(self, a: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != a:
            self._cached = None  # free the last one before reading the next
            patterns = np.asarray(self.arrays[a].get_patterns())
            self._cached = (a, patterns[:, self.window[0], self.window[1]])
        return self._cached[1]

    def _rows(self, key: slice | np.ndarray) -> np.ndarray:
        index = np.arange(self.shape[0])[key] if isinstance(key, slice) else np.asarray(key)
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        which = self.rows[index]
        for a in np.unique(which[:, 0]):  # each array read once per request
            sel = np.flatnonzero(which[:, 0] == a)
            out[sel] = self._array(int(a))[which[sel, 1]]
        return out


def _pattern_rows(dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """(pattern indexes (M,), (M, 2) array and row of each) over the dataset's arrays."""
    indexes, rows = [], []
    for a, array in enumerate(dataset):
        idx = np.asarray(array.get_indexes(), dtype=np.int64).reshape(-1)
        indexes.append(idx)
        rows.append(np.stack([np.full(len(idx), a), np.arange(len(idx))], axis=1))
    if not indexes:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    return np.concatenate(indexes), np.concatenate(rows).astype(np.int64)


def square_window(h: int, w: int, centre: tuple[int, int] | None) -> tuple[slice, slice]:
    """The largest square of an ``h`` x ``w`` detector centred on ``centre`` (y, x) as far as
    the detector allows (default: the array centre); the whole detector when it is square.

    >>> square_window(6, 10, None)
    (slice(0, 6, None), slice(2, 8, None))
    >>> square_window(6, 10, (3, 1))
    (slice(0, 6, None), slice(0, 6, None))
    """
    side = min(h, w)
    cy, cx = centre if centre is not None else (h // 2, w // 2)
    top = int(np.clip(cy - side // 2, 0, h - side))
    left = int(np.clip(cx - side // 2, 0, w - side))
    return slice(top, top + side), slice(left, left + side)


def _geometry(metadata: Any, given: dict[str, float] | None) -> dict[str, float]:
    """The file's energy, distance and detector pixel, overridden by the ones given."""
    found: dict[str, float] = {}
    if metadata.photon_energy_eV:
        found["photon_energy_eV"] = float(metadata.photon_energy_eV)
    if metadata.detector_distance_m:
        found["detector_distance_m"] = float(metadata.detector_distance_m)
    pixel = metadata.detector_pixel_geometry
    if pixel is not None and pixel.width_m > 0 and pixel.height_m > 0:
        if not np.isclose(pixel.width_m, pixel.height_m, rtol=1e-6):
            raise DataError(
                f"detector pixels of {pixel.width_m:.4g} x {pixel.height_m:.4g} m: only square "
                "pixels are supported"
            )
        found["detector_pixel_m"] = float(pixel.width_m)
    return {**found, **(given or {})}


def _pixel_size(geometry: dict[str, float], pixel_size_m: float | None, h: int) -> float:
    if pixel_size_m is not None:
        return pixel_size_m
    if set(GEOMETRY_KEYS) <= set(geometry):
        return object_pixel_size_m(
            geometry["photon_energy_eV"], geometry["detector_distance_m"],
            geometry["detector_pixel_m"], h,
        )  # fmt: skip
    missing = [k for k in GEOMETRY_KEYS if k not in geometry]
    flags = {
        "photon_energy_eV": "--energy_eV",
        "detector_distance_m": "--distance_m",
        "detector_pixel_m": "--detector_pixel_m",
    }
    raise DataError(
        f"the file does not record {', '.join(missing)}, which give the object pixel size: "
        f"give {' '.join(flags[k] for k in missing)} (or --pixel_size_m)"
    )


def _probe_array(probes: Any, path: Path) -> np.ndarray:
    """(P, H, W) complex64 from a Ptychodus probe sequence (its first OPR mode)."""
    array = np.asarray(probes.get_array())
    if array.ndim == 4:  # (OPR modes, incoherent modes, H, W)
        if array.shape[0] > 1:
            logger.warning("%s: %d OPR probe modes; using the first", path, array.shape[0])
        array = array[0]
    return array.reshape(-1, *array.shape[-2:]).astype(np.complex64)


def read_probe(path: str | Path, reader: str) -> np.ndarray:
    """A probe file read by the Ptychodus probe reader ``reader``: (P, H, W) complex64."""
    p = Path(path)
    strategy = _strategy(_registry(), "probe", reader)
    return _probe_array(_read(strategy, p, "probe", reader), p)


def _probe(registry: Any, files: BeamlineFiles) -> np.ndarray:
    """The probe the patterns' file holds, read by the probe reader of the same name."""
    strategy = _strategy(registry, "probe", files.reader, required=False)
    if strategy is None:
        raise DataError(
            f"{files.path}: Ptychodus's {files.reader} reader gives no probe: give one "
            "(--probe FILE, with --probe_reader NAME for a file only Ptychodus reads)"
        )
    return _probe_array(_read(strategy, Path(files.path), "probe", files.reader), files.path)


def read_beamline(
    files: BeamlineFiles, probe_for: Callable[[int], np.ndarray] | None = None
) -> Any:
    """Read a raw beamline scan with Ptychodus's readers into a ScanData (patterns on disk).

    ``probe_for(side)``: the (P, side, side) probe for the square detector read, instead of
    the probe reader's.
    """
    from ptychopinn.io.scan import ScanData

    registry = _registry()
    strategy = _strategy(registry, "diffraction", files.reader)
    dataset = _read(strategy, Path(files.path), "patterns", files.reader)
    metadata = dataset.get_metadata()
    pattern_index, rows = _pattern_rows(dataset)
    if len(pattern_index) == 0:
        raise DataError(f"{files.path}: Ptychodus's {files.reader} reader found no patterns")
    h = int(metadata.detector_extent.height_px)
    w = int(metadata.detector_extent.width_px)
    if h <= 0 or w <= 0:  # a reader that leaves the extent to its arrays
        h, w = (int(v) for v in np.shape(dataset[0].get_patterns())[-2:])
    pos_name = files.positions_reader or files.reader
    pos_strategy = _strategy(registry, "positions", pos_name)
    pos_path = Path(files.positions_path or files.path)
    positions = _read(pos_strategy, pos_path, "positions", pos_name)
    pos_index = np.asarray(positions.get_indexes(), dtype=np.int64)
    xy_m = np.stack(
        [np.asarray(positions.get_coordinates_x_m()), np.asarray(positions.get_coordinates_y_m())],
        axis=1,
    ).astype(np.float64)
    # pair by index (the first position of a repeated index), patterns in their file order
    unique, first = np.unique(pos_index, return_index=True)
    if len(unique) == 0:
        raise DataError(f"{pos_path}: Ptychodus's {pos_name} reader found no positions")
    where = np.clip(np.searchsorted(unique, pattern_index), 0, len(unique) - 1)
    has = unique[where] == pattern_index
    if not np.any(has):
        raise DataError(
            f"{pos_path}: none of its {len(pos_index)} positions has the index of one of the "
            f"{len(pattern_index)} patterns of {files.path}"
        )
    if not np.all(has) or len(unique) != int(np.sum(has)):
        logger.warning(
            "%s: %d patterns, %d positions: %d paired by index, the rest left out",
            files.path, len(pattern_index), len(pos_index), int(np.sum(has)),
        )  # fmt: skip
    xy_m = xy_m[first[where[has]]]
    if not np.all(np.isfinite(xy_m)):
        raise DataError(f"{pos_path}: positions that are not finite numbers")
    centre = metadata.beam_center
    window = square_window(h, w, None if centre is None else (centre.y_px, centre.x_px))
    side = window[0].stop - window[0].start
    if (h, w) != (side, side):
        logger.info(
            "%s: a %d x %d detector: the %d x %d square at rows %d-%d, columns %d-%d is kept "
            "(around the %s)", files.path, h, w, side, side, window[0].start, window[0].stop - 1,
            window[1].start, window[1].stop - 1,
            "recorded beam centre" if centre is not None else "array centre",
        )  # fmt: skip
    geometry = _geometry(metadata, files.geometry)
    pixel = _pixel_size(geometry, files.pixel_size_m, side)
    yx_m = xy_m[:, [1, 0]]
    origin = yx_m.min(axis=0) - (side // 2) * pixel
    bad = np.asarray(dataset.get_bad_pixels(), dtype=bool)
    bad = bad[window] if bad.shape == (h, w) else np.zeros((side, side), bool)
    bad_pixels = bad if bad.any() else None
    logger.info(
        "%s: %d patterns (Ptychodus %s reader), positions from %s (%s reader), object pixel "
        "%.4g m%s%s",
        files.path, int(np.sum(has)), files.reader, pos_path, pos_name, pixel,
        "" if bad_pixels is None else f", {int(bad_pixels.sum())} bad pixels",
        "" if centre is None else f", beam centre recorded at (y, x) = ({centre.y_px}, "
        f"{centre.x_px}) of the whole detector",
    )  # fmt: skip
    return ScanData(
        diffraction=PtychodusPatterns(list(dataset), rows[has], window, metadata.pattern_dtype),
        units="counts",
        positions_px=(yx_m - origin) / pixel,
        probe=_probe(registry, files) if probe_for is None else probe_for(side),
        bad_pixels=bad_pixels,
        pixel_size_m=pixel,
        source=str(files.path),
        metadata={
            "ptychodus_reader": {"patterns": files.reader, "positions": pos_name},
            "geometry": geometry,
            "origin_m": origin.tolist(),
        },
    )
