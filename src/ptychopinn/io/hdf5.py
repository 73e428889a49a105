"""Chunked HDF5 scans: the scan NPZ keys in an HDF5 file that streams from disk.

Scans of 10^5-10^6 patterns do not fit in memory; this format keeps them on disk and reads
the patterns as they are needed (training items, inference chunks).

Layout
------
Root attributes

* ``format`` = ``"ptychopinn-scan"`` (tells it apart from Ptychodus's ``product.h5`` and
  ``diffraction.h5``), ``format_version`` = 1
* ``diffraction_units``: ``"counts"`` (photon counts) or ``"amplitude"`` (sqrt of counts)

Root datasets, named as the NPZ keys

* ``diffraction`` (M, N, N): integer counts or float, chunked along M (a few patterns per
  chunk), DC at the array centre
* ``xcoords``, ``ycoords`` (M,): positions in object pixels (patch centres)
* ``probeGuess`` (N, N) or (P, N, N) complex
* optional: ``objectGuess`` (Ho, Wo) complex, ``xcoords_start``, ``ycoords_start`` (M,),
  ``scan_index`` (M,) int, ``bad_pixels`` (N, N) bool, ``pixel_size_m`` ()
  float (the object pixel size in metres), ``Y`` (M, N, N) complex

Everything but ``diffraction`` is read into memory. ``diffraction`` stays in the file behind an
:class:`H5Array`, which reopens the file in every process, so DataLoader workers (fork or spawn)
read it safely. Write with :func:`scan_h5_writer` (pattern batches appended in order, never the
whole stack in memory) or :func:`write_scan_h5`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.errors import DataError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.npz import UnitsRequest, scan_from_arrays
from ptychopinn.io.paths import check_regular_file
from ptychopinn.io.scan import ScanData

logger = logging.getLogger(__name__)

FORMAT = "ptychopinn-scan"
FORMAT_VERSION = 1
#: Bytes of patterns per HDF5 chunk of ``diffraction`` (at least one pattern).
CHUNK_BYTES = 64 * 1024
#: Patterns written per batch by :func:`write_scan_h5`.
WRITE_BATCH = 4096
#: Rows skipped over (read and dropped) rather than starting another read; small gaps are
#: cheaper to read through than one more HDF5 call (about 10 us each).
_MAX_GAP_ROWS = 4
_SMALL_KEYS = (
    "xcoords",
    "ycoords",
    "probeGuess",
    "objectGuess",
    "xcoords_start",
    "ycoords_start",
    "scan_index",
    "bad_pixels",
    "pixel_size_m",
    "background",
    "Y",
)


def _h5py() -> Any:
    with contextlib.suppress(ImportError):  # extra HDF5 filters (bitshuffle, LZ4, ...)
        import hdf5plugin  # noqa: F401
    import h5py

    return h5py


def open_h5(path: Path) -> Any:
    """An HDF5 file opened for reading; DataError if it is not one."""
    try:
        return _h5py().File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc


class H5Array:
    """Read-only array-like over one HDF5 dataset; each process opens the file itself.

    h5py objects must not cross a fork or a pickle, so only the path and the dataset name
    are kept; the file is opened on first read in each process (and after pickling).
    Indexing along axis 0 accepts an int, a slice, or an array of indices (any order,
    repeats allowed); other axes may follow in a tuple.

    Shapes
    ------
    shape : the dataset's, e.g. (M, N, N)
    """

    def __init__(self, path: str | os.PathLike[str], name: str):
        self.path = str(Path(path).resolve())
        self.name = name
        with _h5py().File(self.path, "r") as f:
            ds = f[name]
            self.shape: tuple[int, ...] = tuple(int(v) for v in ds.shape)
            self.dtype = np.dtype(ds.dtype)
            self.chunks: tuple[int, ...] | None = ds.chunks
        self._file: Any = None
        self._dataset: Any = None
        self._pid = -1

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"H5Array({self.path!r}, {self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_file=None, _dataset=None, _pid=-1)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def close(self) -> None:
        """Close this process's handle (the next read reopens the file)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._dataset, self._pid = None, None, -1

    def _open(self) -> Any:
        if self._dataset is None or self._pid != os.getpid():
            # a handle inherited through fork is left alone: closing it could disturb the parent
            self._file = _h5py().File(self.path, "r")
            self._dataset = self._file[self.name]
            self._pid = os.getpid()
        return self._dataset

    def __getitem__(self, key: Any) -> Any:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        try:
            ds = self._open()
            if isinstance(key, (int, np.integer, slice)) or key is Ellipsis:
                return ds[(key, *rest)] if rest else ds[key]
            rows = self._read_rows(ds, np.asarray(key))
            return rows[(slice(None), *rest)] if rest else rows
        except OSError as exc:
            raise DataError(f"{self.path}: {self.name}: cannot read ({exc})") from exc

    def _read_rows(self, ds: Any, index: np.ndarray) -> np.ndarray:
        m = self.shape[0]
        if index.dtype == bool:
            if index.shape != (m,):
                raise IndexError(f"boolean index of shape {index.shape} for {m} rows")
            index = np.flatnonzero(index)
        if index.ndim != 1 or (index.size and index.dtype.kind not in "iu"):
            raise IndexError(f"expected a 1-D integer index, got {index.dtype} {index.shape}")
        index = np.where(index < 0, index + m, index).astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= m):
            raise IndexError(f"index out of range for {m} rows")
        unique, inverse = np.unique(index, return_inverse=True)
        out = np.empty((unique.size, *self.shape[1:]), dtype=self.dtype)
        # contiguous runs (small gaps read through) as slices: one HDF5 call per run
        breaks = np.flatnonzero(np.diff(unique) > _MAX_GAP_ROWS + 1) + 1
        for run in np.split(np.arange(unique.size), breaks):
            if run.size == 0:
                continue
            lo, hi = int(unique[run[0]]), int(unique[run[-1]]) + 1
            block = ds[lo:hi]
            out[run] = block if hi - lo == run.size else block[unique[run] - lo]
        return out if np.array_equal(unique, index) else out[inverse]


def _is_version(value: Any, expected: int) -> bool:
    """Whether an attribute holds the integer ``expected`` (not text, not a bool, not a list)."""
    array = np.asarray(value) if value is not None else None
    if array is None or array.shape != () or array.dtype.kind not in "iu":
        return False
    return int(array) == expected


def check_stored_inside(path: str | os.PathLike[str], key: str, dataset: Any) -> None:
    """Refuse a dataset whose data live in other files (virtual or external storage): reading
    it would silently read those files, or fill values where they are missing."""
    if getattr(dataset, "is_virtual", False) or getattr(dataset, "external", None):
        kind = "a virtual dataset" if getattr(dataset, "is_virtual", False) else "external storage"
        raise DataError(
            f"{path}: {key}: its data live in other files ({kind}); ptychopinn reads only data "
            "stored inside the file (copy them in, e.g. with h5py or h5repack)"
        )


def is_scan_h5(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an HDF5 file carrying this format's marker."""
    try:
        with _h5py().File(path, "r") as f:
            return _text(f.attrs.get("format")) == FORMAT
    except (OSError, ValueError):
        return False


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return value if isinstance(value, str) else None


def read_scan_h5(path: str | os.PathLike[str], units: UnitsRequest = "auto") -> ScanData:
    """Read a chunked HDF5 scan (see the module docstring); ``diffraction`` stays on disk.

    ``units`` other than ``"auto"`` overrides the file's ``diffraction_units`` attribute
    (with a warning where they disagree).

    Shapes
    ------
    diffraction (M, N, N) :class:`H5Array`; positions_px (M, 2); probe (P, N, N)

    Raises
    ------
    DataError
        Not a readable HDF5 file, not this format, a missing or malformed dataset or attribute.
    """
    p = check_regular_file(path, "an HDF5 file")
    source = str(p)
    h5py = _h5py()
    with open_h5(p) as f:
        marker = _text(f.attrs.get("format"))
        if marker != FORMAT:
            raise DataError(
                f"{p}: format: expected root attribute format = {FORMAT!r}, got {marker!r}"
            )
        version = f.attrs.get("format_version")
        if not _is_version(version, FORMAT_VERSION):
            raise DataError(f"{p}: format_version: expected {FORMAT_VERSION}, got {version!r}")
        stored = _text(f.attrs.get("diffraction_units"))
        if stored not in ("counts", "amplitude"):
            raise DataError(
                f"{p}: diffraction_units: expected attribute 'counts' or 'amplitude', "
                f"got {f.attrs.get('diffraction_units')!r}"
            )
        arrays: dict[str, Any] = {}
        for key in ("diffraction", "xcoords", "ycoords", "probeGuess"):
            if key not in f:
                raise DataError(f"{p}: missing dataset '{key}'; found {sorted(f.keys())}")
        for key in ("diffraction", *_SMALL_KEYS):
            if key not in f:
                continue
            if not isinstance(f[key], h5py.Dataset):
                raise DataError(f"{p}: '{key}': expected a dataset, got a group")
            check_stored_inside(p, key, f[key])
            if key != "diffraction":
                try:
                    arrays[key] = np.asarray(f[key][()])
                except (OSError, TypeError, ValueError) as exc:
                    raise DataError(f"{p}: {key}: not a readable dataset ({exc})") from exc
        diff_ds = f["diffraction"]
        if diff_ds.ndim != 3:
            raise DataError(
                f"{p}: diffraction: expected 3 dimensions (M, N, N), got shape {diff_ds.shape}"
            )
    diffraction = H5Array(p, "diffraction")
    m = len(arrays["xcoords"]) if np.ndim(arrays["xcoords"]) == 1 else -1
    if m >= 0 and diffraction.shape[0] != m:  # no legacy (H, W, M) layout in this format
        raise DataError(
            f"{p}: diffraction: expected {m} patterns to match xcoords, "
            f"got shape {diffraction.shape}"
        )
    arrays["diffraction"] = diffraction
    if units != "auto" and units != stored:
        logger.warning(
            "%s: diffraction_units is %r in the file; using %r as asked", source, stored, units
        )
    resolved: UnitsRequest = stored if units == "auto" else units  # type: ignore[assignment]
    return scan_from_arrays(arrays, source, resolved)


class PatternSink:
    """Appends pattern batches, in order, to the ``diffraction`` dataset being written."""

    def __init__(self, dataset: Any, source: str):
        self._dataset = dataset
        self._source = source
        self.n_written = 0

    @property
    def n_patterns(self) -> int:
        return int(self._dataset.shape[0])

    def append(self, patterns: np.ndarray) -> None:
        """Write ``patterns`` (B, N, N) after those written so far."""
        block = np.asarray(patterns)
        end = self.n_written + block.shape[0]
        if block.ndim != 3 or block.shape[1:] != self._dataset.shape[1:] or end > self.n_patterns:
            raise DataError(
                f"{self._source}: diffraction: expected batches (B, *{self._dataset.shape[1:]}) "
                f"adding up to {self.n_patterns} patterns, got {block.shape} after "
                f"{self.n_written}"
            )
        self._dataset[self.n_written : end] = block
        self.n_written = end


@contextlib.contextmanager
def scan_h5_writer(
    path: str | os.PathLike[str],
    *,
    n_patterns: int,
    n: int,
    dtype: Any,
    units: str,
    positions_px: np.ndarray,
    probe: np.ndarray,
    object: np.ndarray | None = None,
    nominal_positions_px: np.ndarray | None = None,
    scan_index: np.ndarray | None = None,
    bad_pixels: np.ndarray | None = None,
    pixel_size_m: float | None = None,
    background: np.ndarray | None = None,
    compression: str | None = None,
) -> Iterator[PatternSink]:
    """Write a chunked HDF5 scan atomically; the patterns are appended through the sink.

    Everything but the patterns is written on entry; the caller appends exactly
    ``n_patterns`` patterns in order. The file appears under ``path`` only when the block
    exits without an error and every pattern was written.

    Shapes
    ------
    positions_px, nominal_positions_px : (M, 2) (y, x); probe : (N, N) or (P, N, N);
    object : (Ho, Wo); scan_index : (M,); bad_pixels : (N, N)
    """
    if units not in ("counts", "amplitude"):
        raise DataError(
            f"{path}: diffraction_units: expected 'counts' or 'amplitude', got {units!r}"
        )
    h5py = _h5py()
    dtype = np.dtype(dtype)
    rows = max(1, min(n_patterns, CHUNK_BYTES // (n * n * dtype.itemsize)))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["diffraction_units"] = units
        dataset = f.create_dataset(
            "diffraction",
            shape=(n_patterns, n, n),
            dtype=dtype,
            chunks=(rows, n, n),
            compression=compression,
        )
        pos = np.asarray(positions_px, dtype=np.float64)
        f["xcoords"], f["ycoords"] = pos[:, 1], pos[:, 0]
        probe = np.asarray(probe)
        f["probeGuess"] = probe[0] if probe.ndim == 3 and probe.shape[0] == 1 else probe
        if nominal_positions_px is not None:
            nominal = np.asarray(nominal_positions_px, dtype=np.float64)
            f["xcoords_start"], f["ycoords_start"] = nominal[:, 1], nominal[:, 0]
        for key, value in (
            ("objectGuess", object),
            ("scan_index", scan_index),
            ("bad_pixels", bad_pixels),
            ("pixel_size_m", pixel_size_m),
            ("background", background),
        ):
            if value is not None:
                f[key] = np.asarray(value)
        sink = PatternSink(dataset, str(path))
        yield sink
        if sink.n_written != n_patterns:
            raise DataError(
                f"{path}: diffraction: expected {n_patterns} patterns written, got {sink.n_written}"
            )


def write_scan_h5(
    path: str | os.PathLike[str], scan: ScanData, compression: str | None = None
) -> None:
    """Write a scan as a chunked HDF5 scan, copying its patterns in batches.

    The scan's diffraction may itself be on disk (memory-mapped NPZ, HDF5): at most
    :data:`WRITE_BATCH` patterns are in memory at a time. Counts are stored as int32 (as in
    :func:`ptychopinn.io.npz.write_scan_npz`), amplitudes as float32.
    """
    counts = scan.units == "counts"
    source_dtype = np.dtype(scan.diffraction.dtype)
    dtype = (
        source_dtype
        if counts and source_dtype.kind in "iu"
        else np.dtype(np.int32 if counts else np.float32)
    )
    with scan_h5_writer(
        path,
        n_patterns=scan.n_patterns,
        n=scan.N,
        dtype=dtype,
        units=scan.units,
        positions_px=scan.positions_px,
        probe=scan.probe,
        object=scan.object,
        nominal_positions_px=scan.nominal_positions_px,
        scan_index=scan.scan_index,
        bad_pixels=scan.bad_pixels,
        pixel_size_m=scan.pixel_size_m,
        background=scan.background,
        compression=compression,
    ) as sink:
        for start in range(0, scan.n_patterns, WRITE_BATCH):
            block = np.asarray(scan.diffraction[start : start + WRITE_BATCH])
            if counts and block.dtype.kind == "f":
                block = np.round(block)
            sink.append(block.astype(dtype, copy=False))
