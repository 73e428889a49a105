"""``ptychopinn convert``: a scan from any layout we read into any we write, detector prepared.

Reads what :func:`ptychopinn.workflows.read_scan` reads (scan NPZ, chunked HDF5, CXI, the
tike / pty-chi NPZ layout, a Ptychodus pair); writes a scan NPZ, a chunked HDF5 scan, CXI or
the tike layout. On the way it can crop and bin the detector to N (the probe resampled and
the positions rescaled to match, :mod:`ptychopinn.io.detector`), fftshift patterns stored in
FFT order, correct the diffraction-centre offset (a phase ramp on the probe), replace the
probe, and attach the physical geometry that gives the object pixel size.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.detector import LazyPatterns, prepare, upsample_probe
from ptychopinn.io.scan import ScanData
from ptychopinn.io.tike import fftshifted
from ptychopinn.io.units import object_pixel_size_m

logger = logging.getLogger(__name__)

#: Output suffix -> writer name; ``.npz`` is the tike layout with ``layout="tike"``.
OUTPUT_SUFFIXES = {".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".cxi": "cxi"}


@dataclass(frozen=True)
class ConvertOptions:
    """What to do on the way (every field optional).

    detector_crop, detector_bin : see :func:`ptychopinn.io.detector.prepare`
    centre : (y, x) zero-frequency pixel of the input detector (default measured)
    correct_centre : give the probe the phase ramp of the measured centre offset
    probe : (P, n, n) complex probe replacing (or supplying) the input's, at the input
        detector's size or at the output's
    positions : ``corner`` or ``centre``, how the tike layout's ``scan`` is read
    photon_energy_eV, detector_distance_m, detector_pixel_m : the input detector's geometry
    pixel_size_m : the input patterns' object pixel size (instead of the geometry)
    units : diffraction units of the input (``auto``, ``counts``, ``amplitude``)
    probe_modes : incoherent probe modes of the output (extra ones started as in
        :func:`ptychopinn.data.samples.add_probe_modes`, for ``infer --refine_probe``)
    background : a constant detector background of the input, per pixel and pattern (counts)
    flip_positions : ``""``, ``x``, ``y`` or ``xy``: mirror the positions along those axes
        (about the scan's centre), for a stage whose axes run against the detector's
    swap_positions : exchange the positions' x and y (a stage mounted turned by 90 degrees)
    layout : ``ptychopinn`` or ``tike`` for an ``.npz`` output
    reader : read the input with this Ptychodus diffraction reader (``NSLS_II_1``,
        ``APS_Velociprobe``, ...; :mod:`ptychopinn.io.beamline`); the geometry given then
        completes or overrides what the file records, and the probe is ``probe`` or else the
        input's own, read by the probe reader of the same name
    positions_file, positions_reader : where the positions are and the Ptychodus reader of
        that file (default: the input and ``reader``)
    """

    detector_crop: int | None = None
    detector_bin: int = 1
    centre: tuple[float, float] | None = None
    correct_centre: bool = True
    probe: np.ndarray | None = None
    positions: str = "corner"
    photon_energy_eV: float | None = None  # noqa: N815
    detector_distance_m: float | None = None
    detector_pixel_m: float | None = None
    pixel_size_m: float | None = None
    units: str = "auto"
    background: float | None = None
    probe_modes: int | None = None
    flip_positions: str = ""
    swap_positions: bool = False
    layout: str = "ptychopinn"
    reader: str | None = None
    positions_file: str | None = None
    positions_reader: str | None = None

    def given_geometry(self) -> dict[str, float]:
        """The energy, distance and detector pixel given (any of them)."""
        given = {
            "photon_energy_eV": self.photon_energy_eV,
            "detector_distance_m": self.detector_distance_m,
            "detector_pixel_m": self.detector_pixel_m,
        }
        return {k: float(v) for k, v in given.items() if v is not None}

    def geometry(self) -> dict[str, float]:
        """The geometry given: all three values or none (a file read by ``reader`` records
        its own, which the given ones complete or override)."""
        if self.reader is not None:
            return {}
        known = self.given_geometry()
        if known and len(known) < 3:
            given = ("photon_energy_eV", "detector_distance_m", "detector_pixel_m")
            missing = sorted(set(given) - set(known))
            raise ConfigError(
                f"the object pixel size needs the energy, distance and detector pixel size "
                f"together: missing {', '.join(missing)}"
            )
        if known and self.pixel_size_m is not None:
            raise ConfigError("give either --pixel_size_m or the detector geometry, not both")
        return known


def read_input(path: str | os.PathLike[str], options: ConvertOptions) -> ScanData:
    """The input scan, with ``options.probe`` (resampled onto the input detector) if given."""
    from ptychopinn.io.cxi import is_cxi, pattern_size, read_cxi
    from ptychopinn.io.npz import load_npz_arrays
    from ptychopinn.io.tike import is_tike_layout, scan_from_tike
    from ptychopinn.workflows import read_scan

    p = Path(path)
    probe = options.probe
    if options.reader is not None:
        return _read_beamline(p, options)
    if is_cxi(p) and p.is_file():
        big = None if probe is None else _probe_on_detector(probe, pattern_size(p), options)
        return read_cxi(p, options.units, probe=big)
    if p.suffix == ".npz" and p.is_file():
        arrays = load_npz_arrays(p)
        if is_tike_layout(arrays):
            scan = scan_from_tike(arrays, str(p), options.positions)  # type: ignore[arg-type]
            return _with_probe(scan, probe, options)
    return _with_probe(read_scan(p, options.units), probe, options)


def _read_beamline(path: Path, options: ConvertOptions) -> ScanData:
    """A raw beamline file through Ptychodus's readers (``options.reader``)."""
    from ptychopinn.io.beamline import BeamlineFiles, read_beamline

    given = options.given_geometry()
    if given and options.pixel_size_m is not None:
        raise ConfigError("give either --pixel_size_m or the detector geometry, not both")
    files = BeamlineFiles(
        path=path,
        reader=str(options.reader),
        positions_path=Path(options.positions_file) if options.positions_file else None,
        positions_reader=options.positions_reader,
        geometry=given,
        pixel_size_m=options.pixel_size_m,
    )
    given_probe = options.probe
    if given_probe is None:
        return read_beamline(files)
    # a probe given at the output size is resampled onto the (square) detector read
    return read_beamline(files, lambda side: _probe_on_detector(given_probe, side, options))


def _probe_on_detector(probe: np.ndarray, detector: int, options: ConvertOptions) -> np.ndarray:
    """A probe given at the output size, upsampled onto the input detector's grid."""
    n = probe.shape[-1]
    if probe.shape[-2] != n:
        raise DataError(f"probe: expected square frames, got {probe.shape}")
    if n == detector:
        return probe
    crop = options.detector_crop or detector
    if n * options.detector_bin == crop:
        return upsample_probe(probe, crop, detector)
    raise DataError(
        f"probe: {n} x {n} matches neither the {detector}-pixel detector nor the "
        f"{crop // options.detector_bin}-pixel output patterns"
    )


def _with_probe(scan: ScanData, probe: np.ndarray | None, options: ConvertOptions) -> ScanData:
    if probe is None:
        return scan
    return dataclasses.replace(scan, probe=_probe_on_detector(probe, scan.N, options))


def prepare_scan(scan: ScanData, options: ConvertOptions) -> ScanData:
    """Geometry attached, FFT order undone, detector cropped/binned, centre corrected."""
    from ptychopinn.io.summary import diffraction_geometry

    geometry = options.geometry()
    meta = dict(scan.metadata)
    if geometry:
        size = object_pixel_size_m(
            geometry["photon_energy_eV"], geometry["detector_distance_m"],
            geometry["detector_pixel_m"], scan.N,
        )  # fmt: skip
        meta["geometry"] = geometry
        scan = dataclasses.replace(scan, pixel_size_m=size, metadata=meta)
    elif options.pixel_size_m is not None:
        scan = dataclasses.replace(scan, pixel_size_m=options.pixel_size_m)
    scan = _oriented(scan, options)
    if options.background is not None:
        scan = dataclasses.replace(scan, background=np.asarray(options.background))
    if diffraction_geometry(scan).corner:
        logger.info("%s: zero frequency in the array corner: patterns fftshifted", scan.source)
        shifted = LazyPatterns(scan.diffraction, fftshifted, scan.N, scan.diffraction.dtype)
        bad = None if scan.bad_pixels is None else fftshifted(scan.bad_pixels)
        bg = None if scan.background is None else fftshifted(scan.background)
        scan = dataclasses.replace(scan, diffraction=shifted, bad_pixels=bad, background=bg)
    out = prepare(
        scan, options.detector_crop, options.detector_bin, options.centre, options.correct_centre
    )
    if options.probe_modes is not None and options.probe_modes != out.n_probe_modes:
        from ptychopinn.data.samples import add_probe_modes

        modes = add_probe_modes(out.probe, options.probe_modes)
        logger.info(
            "probe: %d incoherent modes (%d added)", len(modes), len(modes) - out.n_probe_modes
        )
        out = dataclasses.replace(out, probe=modes)
    known = out.metadata.get("geometry")
    if known and "detector_pixel_m" in known and options.detector_bin > 1:
        binned = {**known, "detector_pixel_m": known["detector_pixel_m"] * options.detector_bin}
        out = dataclasses.replace(out, metadata={**out.metadata, "geometry": binned})
    return out


def _oriented(scan: ScanData, options: ConvertOptions) -> ScanData:
    """The positions swapped and mirrored as asked (nominal positions alike)."""
    if options.flip_positions not in ("", "x", "y", "xy"):
        raise ConfigError(f"flip_positions: expected x, y or xy, got {options.flip_positions!r}")
    if not options.flip_positions and not options.swap_positions:
        return scan
    pos = scan.positions_px.copy()
    nominal = scan.nominal_positions_px.copy() if scan.nominal_positions_px is not None else pos
    if options.swap_positions:
        pos, nominal = pos[:, ::-1].copy(), nominal[:, ::-1].copy()
    for axis, name in ((0, "y"), (1, "x")):
        if name in options.flip_positions:
            mirror = pos[:, axis].min() + pos[:, axis].max()
            pos[:, axis], nominal[:, axis] = mirror - pos[:, axis], mirror - nominal[:, axis]
    logger.info(
        "positions %s%s", "swapped (x <-> y) " if options.swap_positions else "",
        f"mirrored along {options.flip_positions}" if options.flip_positions else "",
    )  # fmt: skip
    # a reference object no longer lies under the moved positions
    return dataclasses.replace(
        scan, positions_px=pos, nominal_positions_px=nominal, object=None, patches=None
    )


def write_output(path: Path, kind: str, scan: ScanData, layout: str = "ptychopinn") -> None:
    """Write ``scan`` to ``path`` in the format its suffix names."""
    if kind == "cxi":
        from ptychopinn.io.cxi import write_cxi

        write_cxi(path, scan)
    elif kind == "h5":
        from ptychopinn.io.hdf5 import write_scan_h5

        write_scan_h5(path, scan)
    elif layout == "tike":
        from ptychopinn.io.tike import write_tike_npz

        write_tike_npz(path, scan)
    else:
        from ptychopinn.io.npz import write_scan_npz

        write_scan_npz(path, scan)


def convert(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    options: ConvertOptions | None = None,
    overwrite: bool = False,
) -> ScanData:
    """Read ``source``, prepare it (:func:`prepare_scan`), write ``target``; returns what was
    written. Nothing is written when anything fails."""
    from ptychopinn.io.outputs import check_output_file

    options = options or ConvertOptions()
    out_path = Path(target)
    if out_path.exists() and Path(source).exists() and out_path.samefile(source):
        raise ConfigError(f"{target}: the output would replace its own input")
    kind = check_output_file(out_path, OUTPUT_SUFFIXES, overwrite)
    if options.layout not in ("ptychopinn", "tike"):
        raise ConfigError(f"layout: expected 'ptychopinn' or 'tike', got {options.layout!r}")
    if options.layout == "tike" and kind != "npz":
        raise ConfigError("the tike layout is an NPZ: name the output *.npz")
    scan = prepare_scan(read_input(source, options), options)
    write_output(out_path, kind, scan, options.layout)
    logger.info(
        "wrote %s: %d patterns of %d x %d, object pixel %s",
        out_path, scan.n_patterns, scan.N, scan.N,
        f"{scan.pixel_size_m:.4g} m" if scan.pixel_size_m else "unknown",
    )  # fmt: skip
    return scan


def describe(scan: ScanData) -> dict[str, Any]:
    """What a reader assumed, for ``check``: layout, units, axis order, centre, geometry."""
    meta = scan.metadata
    notes: dict[str, Any] = {}
    if "tike" in meta:
        t = meta["tike"]
        notes["layout"] = "tike / pty-chi NPZ (data, scan, probe)"
        notes["positions_read_as"] = f"scan (y, x) in object pixels, window {t['positions']}s"
        notes["zero_frequency_read_as"] = t.get("zero_frequency", "array centre (as stored)")
    elif "cxi" in meta:
        notes["layout"] = f"CXI (patterns at /{meta['cxi'].get('data', 'entry_1/data_1/data')})"
        notes["positions_read_as"] = "translation x, y [m] as the probe's positions"
    elif "ptychodus" in meta:
        notes["layout"] = "Ptychodus product + diffraction pair"
        notes["positions_read_as"] = "probe_position_x_m, probe_position_y_m [m]"
    else:
        notes["layout"] = "scan NPZ / HDF5 (diffraction, xcoords, ycoords, probeGuess)"
        notes["positions_read_as"] = "xcoords, ycoords: patch centres in object pixels"
    notes["units_read_as"] = (
        "photon counts" if scan.units == "counts" else "amplitudes sqrt(counts)"
    )
    notes["object_pixel_size"] = (
        f"{scan.pixel_size_m:.4g} m" if scan.pixel_size_m else "unknown (no geometry)"
    )
    return notes
