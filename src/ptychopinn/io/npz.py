"""Scan NPZ files: read into :class:`ScanData`, write atomically.

The diffraction stack of an NPZ written without compression (``np.savez``, as
:func:`write_scan_npz` does) is memory-mapped rather than loaded: the zip member's bytes are
the ``.npy`` file itself, so only the patterns in use are read from disk. Compressed NPZs
(``np.savez_compressed``) are loaded into memory.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.paths import check_regular_file
from ptychopinn.io.scan import ScanData
from ptychopinn.io.tike import is_tike_layout, scan_from_tike
from ptychopinn.resources import check_allocation

logger = logging.getLogger(__name__)

UnitsRequest = Literal["auto", "amplitude", "counts"]

#: NPZ keys memory-mapped when stored uncompressed (the diffraction stack).
MAPPED_KEYS = ("diffraction", "diff3d", "data")
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length
_CRC_BLOCK_BYTES = 16 * 1024**2


def load_npz_arrays(
    path: str | os.PathLike[str],
    mmap_keys: tuple[str, ...] = MAPPED_KEYS,
    max_memory_gb: float | None = None,
) -> dict[str, np.ndarray]:
    """Load every array of an NPZ without ever unpickling.

    Members named in ``mmap_keys`` that are stored uncompressed as C-ordered 3-D real
    arrays come back as read-only ``np.memmap`` (their CRC-32 checked first); all other
    members are loaded.

    Raises
    ------
    DataError
        Missing file, not an NPZ, truncated, damaged, holding object arrays or a member
        twice, or arrays that would not fit ``max_memory_gb`` (default: half the memory)
        once decompressed.
    """
    p = check_regular_file(path, "an NPZ file")
    _check_archive(p, max_memory_gb)
    # numpy and zipfile raise a dozen exception types on damaged, truncated or forged files
    try:
        loaded = np.load(p, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{p}: not a readable NPZ file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{p}: expected an NPZ archive, got a single .npy array")
    with loaded as npz:
        arrays: dict[str, np.ndarray] = {}
        for key in npz.files:
            if key in mmap_keys and npz.zip is not None:
                mapped = _map_member(p, npz.zip, key)
                if mapped is not None:
                    arrays[key] = mapped
                    continue
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                if "allow_pickle" not in str(exc):
                    raise DataError(f"{p}: {key}: not a readable array ({exc})") from exc
                raise DataError(
                    f"{p}: {key}: object arrays are not accepted (would need pickle)"
                ) from exc
            except MemoryError as exc:
                raise DataError(f"{p}: {key}: too large to load ({exc})") from exc
            except Exception as exc:
                raise DataError(
                    f"{p}: {key}: not a readable array ({type(exc).__name__}: {exc})"
                ) from exc
        return arrays


#: A member this much larger than its compressed bytes (and over 64 MiB) is refused.
MAX_COMPRESSION_RATIO = 500


def _check_archive(path: Path, max_memory_gb: float | None) -> None:
    """Refuse before loading: a member twice, a decompression bomb, arrays over budget."""
    try:
        if not zipfile.is_zipfile(path):
            return  # np.load names what it is
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # np.load reports the damage
    names = [info.filename for info in infos]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(f"{path}: holds {twice[0]} more than once; which one is meant is unclear")
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > MAX_COMPRESSION_RATIO and info.file_size > 64 * 1024**2:
            raise DataError(
                f"{path}: {info.filename} expands {ratio:.0f}x to {info.file_size} bytes: "
                "refusing a possible zip bomb"
            )
    # members stored uncompressed are memory-mapped, not loaded
    loaded = sum(info.file_size for info in infos if info.compress_type != zipfile.ZIP_STORED)
    check_allocation(loaded, f"{path}: its compressed arrays, once loaded", max_memory_gb)


def _map_member(path: Path, archive: zipfile.ZipFile, key: str) -> np.memmap | None:
    """Member ``key`` memory-mapped, or None where it cannot be (then it is loaded).

    Only an uncompressed, unencrypted ``.npy`` member holding a non-empty C-ordered 3-D
    array of a real numeric dtype is mapped; anything unusual is left to the ordinary
    loader and its error messages.

    Raises
    ------
    DataError
        The member's bytes do not match the CRC-32 of the zip directory.
    """
    names = archive.namelist()
    name = key + ".npy" if key + ".npy" in names else key
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            raw = fh.read(_ZIP_LOCAL_HEADER.size)
            if len(raw) != _ZIP_LOCAL_HEADER.size:
                return None
            signature, name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(raw)
            if signature != b"PK\x03\x04":
                return None
            start = info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len
            end = start + info.file_size
            if end > os.fstat(fh.fileno()).st_size:
                return None
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                return None
            offset = fh.tell()
            if (
                fortran
                or len(shape) != 3
                or dtype.hasobject
                or dtype.kind not in "uif"
                or np.prod(shape, dtype=np.float64) == 0
                or offset + np.prod(shape, dtype=np.float64) * dtype.itemsize > end
            ):
                return None
            crc = 0
            fh.seek(start)
            for _ in range(start, end, _CRC_BLOCK_BYTES):
                crc = zlib.crc32(fh.read(min(_CRC_BLOCK_BYTES, end - fh.tell())), crc)
    except Exception:  # numpy's header parser raises many types on damaged headers
        return None  # the ordinary loader names the problem
    if crc != info.CRC:
        raise DataError(f"{path}: {key}: damaged (its bytes do not match the zip CRC-32)")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="C")


def scan_from_arrays(
    arrays: dict[str, np.ndarray], source: str, units: UnitsRequest = "auto"
) -> ScanData:
    """Interpret scan NPZ keys and build a validated :class:`ScanData`."""
    if "diffraction" in arrays:
        diff_key = "diffraction"
    elif "diff3d" in arrays:
        diff_key = "diff3d"
    else:
        raise DataError(
            f"{source}: missing key 'diffraction' (or legacy 'diff3d'); found {sorted(arrays)}"
        )
    for key in ("xcoords", "ycoords", "probeGuess"):
        if key not in arrays:
            raise DataError(f"{source}: missing key '{key}'; found {sorted(arrays)}")
    x = np.asarray(arrays["xcoords"])
    y = np.asarray(arrays["ycoords"])
    if x.ndim != 1 or y.shape != x.shape:
        raise DataError(
            f"{source}: xcoords/ycoords: expected two 1-D arrays of equal length, got shapes "
            f"{x.shape} and {y.shape}"
        )
    m = x.shape[0]
    diff = arrays[diff_key]
    if not all(hasattr(diff, a) for a in ("shape", "dtype", "__getitem__")):
        diff = np.asarray(diff)  # Python values; arrays on disk (memmap, HDF5) stay there
    if len(diff.shape) != 3:
        raise DataError(
            f"{source}: {diff_key}: expected 3 dimensions (M, N, N), got shape {diff.shape}"
        )
    if diff.shape[0] != m and diff.shape[2] == m:
        logger.info("%s: %s has legacy (H, W, M) layout; transposing", source, diff_key)
        diff = np.ascontiguousarray(np.transpose(np.asarray(diff), (2, 0, 1)))
    if diff.shape[0] != m:
        raise DataError(
            f"{source}: {diff_key}: expected {m} patterns to match xcoords, got shape {diff.shape}"
        )
    resolved = _units_of(diff, units)

    def optional(key: str) -> Any:
        return arrays.get(key)

    def positions(xk: str, yk: str) -> np.ndarray | None:
        if xk not in arrays and yk not in arrays:
            return None
        if xk not in arrays or yk not in arrays:
            raise DataError(f"{source}: '{xk}' and '{yk}' must be given together")
        xs, ys = np.asarray(arrays[xk]), np.asarray(arrays[yk])
        if xs.shape != (m,) or ys.shape != (m,):
            raise DataError(
                f"{source}: {xk}/{yk}: expected shape ({m},), got {xs.shape} and {ys.shape}"
            )
        return _stack_yx(source, xk, xs, ys)

    scan = ScanData(
        diffraction=diff,
        units=resolved,
        positions_px=_stack_yx(source, "xcoords", x, y),
        probe=arrays["probeGuess"],
        object=optional("objectGuess"),
        nominal_positions_px=positions("xcoords_start", "ycoords_start"),
        scan_index=optional("scan_index"),
        patches=optional("Y"),
        bad_pixels=optional("bad_pixels"),
        pixel_size_m=optional("pixel_size_m"),
        background=optional("background"),
        source=source,
    )
    if units == "auto" and resolved == "amplitude":  # advice only for data that passed
        _warn_if_counts_like(diff, source, diff_key)
    return scan


def _stack_yx(source: str, name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "uif" or y.dtype.kind not in "uif":
        raise DataError(
            f"{source}: {name}: expected real numbers, got dtypes {x.dtype} and {y.dtype}"
        )
    return np.stack([y, x], axis=1).astype(np.float64)


def resolve_units(
    diff: Any, units: UnitsRequest, source: str, key: str
) -> Literal["amplitude", "counts"]:
    """Integer dtype = counts; float = amplitude unless ``units='counts'``.

    Warns when float data look like counts (all whole numbers with a large maximum).
    """
    resolved = _units_of(diff, units)
    if units == "auto" and resolved == "amplitude":
        _warn_if_counts_like(diff, source, key)
    return resolved


def _units_of(diff: Any, units: UnitsRequest) -> Literal["amplitude", "counts"]:
    if units != "auto":
        return units
    # other dtypes: ScanData rejects them with a clear message
    return "counts" if np.dtype(diff.dtype).kind in "iu" else "amplitude"


def _warn_if_counts_like(diff: Any, source: str, key: str) -> None:
    if np.dtype(diff.dtype).kind != "f":
        return
    # patterns spread over the whole stack (the first ones may be a dark or blank start)
    sample = np.asarray(
        diff[np.unique(np.linspace(0, len(diff) - 1, min(len(diff), 1024)).astype(int))]
    )
    if sample.size and np.all(sample == np.round(sample)) and float(sample.max()) > 16:
        logger.warning(
            "%s: %s is float but holds whole numbers up to %g: these look like photon counts; "
            "pass --diffraction-units counts if so (treating them as amplitudes)",
            source,
            key,
            float(sample.max()),
        )


def read_npz(path: str | os.PathLike[str], units: UnitsRequest = "auto") -> ScanData:
    """Read a scan NPZ, or an NPZ in the tike / pty-chi layout (:mod:`ptychopinn.io.tike`)."""
    arrays = load_npz_arrays(path)
    if is_tike_layout(arrays):
        if units == "amplitude":
            raise ConfigError(
                f"{path}: tike / pty-chi data are intensities; amplitude does not apply"
            )
        return scan_from_tike(arrays, str(path))
    return scan_from_arrays(arrays, str(path), units)


def scan_to_arrays(scan: ScanData) -> dict[str, np.ndarray]:
    """The scan NPZ keys for a scan (diffraction kept in its stored units)."""
    diff = np.asarray(scan.diffraction[:])
    out: dict[str, np.ndarray] = {
        "diffraction": diff,
        "xcoords": scan.positions_px[:, 1],
        "ycoords": scan.positions_px[:, 0],
        "probeGuess": scan.probe[0] if scan.n_probe_modes == 1 else scan.probe,
    }
    if scan.scan_index is not None:
        out["scan_index"] = scan.scan_index
    if scan.nominal_positions_px is not None:
        out["xcoords_start"] = scan.nominal_positions_px[:, 1]
        out["ycoords_start"] = scan.nominal_positions_px[:, 0]
    if scan.object is not None:
        out["objectGuess"] = scan.object
    if scan.patches is not None:
        out["Y"] = scan.patches
    if scan.bad_pixels is not None:
        out["bad_pixels"] = scan.bad_pixels
    if scan.background is not None:
        out["background"] = scan.background
    if scan.pixel_size_m is not None:
        out["pixel_size_m"] = np.asarray(scan.pixel_size_m, dtype=np.float64)
    return out


def write_npz(
    path: str | os.PathLike[str], arrays: dict[str, np.ndarray], compress: bool = False
) -> None:
    """Write arrays to an NPZ atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        if compress:
            np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        else:
            np.savez(tmp, **arrays)  # type: ignore[arg-type]


def write_scan_npz(path: str | os.PathLike[str], scan: ScanData) -> None:
    """Write a scan as a scan NPZ. Counts are stored as integers, amplitudes as float32."""
    arrays = scan_to_arrays(scan)
    if scan.units == "counts" and arrays["diffraction"].dtype.kind == "f":
        arrays["diffraction"] = np.round(arrays["diffraction"]).astype(np.int32)
    write_npz(path, arrays)


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
