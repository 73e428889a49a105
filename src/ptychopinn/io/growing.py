"""A chunked HDF5 scan that grows while it is read: HDF5's single-writer/multiple-reader mode.

An acquisition writes one file for the whole scan and appends the patterns and their
positions as they are measured; ``ptychopinn live --watch FILE.h5`` reads the new rows as
they appear, in SWMR (single writer, multiple readers) mode, which HDF5 keeps consistent
while the writer appends. The layout is the chunked HDF5 scan's (``ptychopinn.io.hdf5``)
with three differences:

* ``diffraction`` (M, N, N), ``xcoords`` and ``ycoords`` (M,) are resizable along M
  (``maxshape=(None, ...)``) and grow together; a row counts once all three hold it, so the
  writer appends the patterns first and the positions last, flushing each dataset;
* the optional scalar dataset ``scan_complete`` (int) is 0 while the scan runs and set to 1
  by the writer when it ends;
* the file is written with ``libver="latest"`` and switched to SWMR mode
  (``f.swmr_mode = True``) after every dataset exists: SWMR allows no new datasets or
  attributes later.

:func:`growing_scan_writer` writes this layout; with h5py directly::

    f = h5py.File(path, "w", libver="latest")
    f.attrs.update(format="ptychopinn-scan", format_version=1, diffraction_units="counts")
    d = f.create_dataset("diffraction", (0, N, N), maxshape=(None, N, N), chunks=(16, N, N),
                         dtype="uint32")
    x = f.create_dataset("xcoords", (0,), maxshape=(None,), dtype="f8")
    y = f.create_dataset("ycoords", (0,), maxshape=(None,), dtype="f8")
    f["probeGuess"] = probe
    done = f.create_dataset("scan_complete", data=0)
    f.swmr_mode = True
    for patterns, xs, ys in acquisition:  # each batch: resize, write, flush; positions last
        m = d.shape[0]
        for ds, rows in ((d, patterns), (x, xs), (y, ys)):
            ds.resize(m + len(rows), axis=0); ds[m:] = rows; ds.flush()
    done[()] = 1; done.flush()
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.errors import DataError
from ptychopinn.io.hdf5 import CHUNK_BYTES, FORMAT, FORMAT_VERSION, _h5py, _is_version, _text
from ptychopinn.io.npz import UnitsRequest, scan_from_arrays
from ptychopinn.io.scan import ScanData

#: The datasets that grow, row by row, together.
GROWING = ("diffraction", "xcoords", "ycoords")
#: Datasets read once, when the file is opened (they must exist before SWMR mode starts).
FIXED = ("probeGuess", "bad_pixels", "pixel_size_m", "background")
COMPLETE = "scan_complete"
#: Seconds a new file may take to get its datasets before it is refused.
SETUP_GRACE_S = 5.0


class GrowingScanReader:
    """New rows of a growing chunked HDF5 scan, read in SWMR mode.

    :meth:`open` returns None until the writer has the file in SWMR mode (HDF5 refuses a
    reader before that); :meth:`new_blocks` then gives the rows that arrived since the last
    call, which :meth:`read` reads as a :class:`ScanData` of their own (its patterns in
    memory; the probe, mask and background are the file's).
    """

    def __init__(self, path: Path, units: UnitsRequest = "auto", max_rows: int = 4096):
        self.path, self.units, self.max_rows = path, units, max_rows
        self._file: Any = None
        self._fixed: dict[str, Any] = {}
        self._units: UnitsRequest = units
        self.n_read = 0

    def open(self) -> bool:
        """Try to open the file (False: it is not there or not in SWMR mode yet).

        Raises DataError once it opens and is not a growing scan of this format (a file
        modified in the last :data:`SETUP_GRACE_S` seconds gets that long to become one).
        """
        if self._file is not None:
            return True
        if not self.path.is_file():
            return False
        try:
            f = _h5py().File(self.path, "r", libver="latest", swmr=True)
        except OSError:  # not written in SWMR mode (yet), or still being created
            return False
        try:
            self._check(f)
        except DataError:
            f.close()
            # a writer may still be creating the datasets: a young file gets time to finish
            if time.time() - self.path.stat().st_mtime < SETUP_GRACE_S:
                return False
            raise
        except BaseException:
            f.close()
            raise
        self._file = f
        return True

    def _check(self, f: Any) -> None:
        p = self.path
        if _text(f.attrs.get("format")) != FORMAT:
            raise DataError(f"{p}: format: expected root attribute format = {FORMAT!r}")
        if not _is_version(f.attrs.get("format_version"), FORMAT_VERSION):
            raise DataError(f"{p}: format_version: expected {FORMAT_VERSION}")
        stored = _text(f.attrs.get("diffraction_units"))
        if stored not in ("counts", "amplitude"):
            raise DataError(f"{p}: diffraction_units: expected 'counts' or 'amplitude'")
        for key in (*GROWING, "probeGuess"):
            if key not in f:
                raise DataError(f"{p}: missing dataset '{key}'; found {sorted(f.keys())}")
        for key in GROWING:
            if f[key].maxshape[0] is not None:
                raise DataError(
                    f"{p}: {key}: not resizable (maxshape {f[key].maxshape}): not a growing "
                    "scan (reconstruct a finished scan file with ptychopinn infer)"
                )
        if f["diffraction"].ndim != 3:
            raise DataError(f"{p}: diffraction: expected 3 dimensions (M, N, N)")
        self._fixed = {k: np.asarray(f[k][()]) for k in FIXED if k in f}
        self._units = stored if self.units == "auto" else self.units  # type: ignore[assignment]

    def available(self) -> int:
        """Rows that all of ``diffraction``, ``xcoords`` and ``ycoords`` hold now."""
        if self._file is None:
            return 0
        lengths = []
        for key in GROWING:
            dataset = self._file[key]
            dataset.refresh()
            lengths.append(int(dataset.shape[0]))
        return min(lengths)

    def new_blocks(self) -> list[slice]:
        """The rows that arrived since the last call, in blocks of at most ``max_rows`` (each
        read with :meth:`read`)."""
        end = self.available()
        blocks = [
            slice(start, min(start + self.max_rows, end))
            for start in range(self.n_read, end, self.max_rows)
        ]
        self.n_read = max(self.n_read, end)
        return blocks

    def read(self, rows: slice) -> ScanData:
        """Rows ``rows`` as a scan of their own (patterns in memory; the file's probe, mask
        and background)."""
        arrays = {key: np.asarray(self._file[key][rows]) for key in GROWING}
        arrays.update(self._fixed)
        return scan_from_arrays(arrays, f"{self.path}[{rows.start}:{rows.stop}]", self._units)

    def complete(self) -> bool:
        """The writer set ``scan_complete`` and every row has been handed out."""
        if self._file is None or COMPLETE not in self._file:
            return False
        flag = self._file[COMPLETE]
        flag.refresh()
        return bool(flag[()]) and self.n_read >= self.available()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class GrowingScanWriter:
    """Appends pattern batches with their positions to a growing scan (see the module)."""

    def __init__(self, f: Any):
        self._f = f
        self.n_written = 0

    @property
    def dataset(self) -> Any:
        """The ``diffraction`` rows written so far (an h5py dataset, readable in place)."""
        return self._f["diffraction"]

    def append(self, patterns: np.ndarray, positions_px: np.ndarray) -> None:
        """Append patterns (B, N, N) measured at ``positions_px`` (B, 2) (y, x)."""
        pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
        patterns = np.asarray(patterns)
        if patterns.shape[0] != pos.shape[0]:
            raise DataError(
                f"{self._f.filename}: {patterns.shape[0]} patterns with {pos.shape[0]} positions"
            )
        end = self.n_written + pos.shape[0]
        for key, rows in (
            ("diffraction", patterns),
            ("xcoords", pos[:, 1]),
            ("ycoords", pos[:, 0]),
        ):
            dataset = self._f[key]
            dataset.resize(end, axis=0)
            dataset[self.n_written : end] = rows
            dataset.flush()
        self.n_written = end

    def finish(self) -> None:
        """Mark the scan complete (readers stop once they have read every row)."""
        self._f[COMPLETE][()] = 1
        self._f[COMPLETE].flush()


@contextlib.contextmanager
def growing_scan_writer(
    path: str | os.PathLike[str],
    *,
    n: int,
    dtype: Any,
    units: str,
    probe: np.ndarray,
    bad_pixels: np.ndarray | None = None,
    pixel_size_m: float | None = None,
    background: np.ndarray | None = None,
) -> Iterator[GrowingScanWriter]:
    """Create a growing scan at ``path`` in SWMR mode; append batches, then ``finish()``.

    Unlike the other writers this one is not atomic: readers follow the file as it grows.
    """
    if units not in ("counts", "amplitude"):
        raise DataError(f"{path}: diffraction_units: expected 'counts' or 'amplitude'")
    h5py = _h5py()
    dtype = np.dtype(dtype)
    rows = max(1, CHUNK_BYTES // (n * n * dtype.itemsize))
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["diffraction_units"] = units
        f.create_dataset(
            "diffraction", (0, n, n), maxshape=(None, n, n), chunks=(rows, n, n), dtype=dtype
        )
        for key in ("xcoords", "ycoords"):
            f.create_dataset(key, (0,), maxshape=(None,), chunks=(4096,), dtype=np.float64)
        probe = np.asarray(probe)
        f["probeGuess"] = probe[0] if probe.ndim == 3 and probe.shape[0] == 1 else probe
        for key, value in (
            ("bad_pixels", bad_pixels),
            ("pixel_size_m", pixel_size_m),
            ("background", background),
        ):
            if value is not None:
                f[key] = np.asarray(value)
        f.create_dataset(COMPLETE, data=np.int8(0))
        f.swmr_mode = True
        yield GrowingScanWriter(f)
