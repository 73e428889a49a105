"""Ptychodus product and diffraction files, read and written with h5py.

A Ptychodus scan is a pair of HDF5 files in one directory:

``product.h5``
    root attributes (``name``, ``comments``, ``detector_object_distance_m``,
    ``photon_energy_eV`` or the older ``probe_energy_eV``, ...), the scan positions
    ``probe_position_indexes`` (N,), ``probe_position_x_m`` / ``_y_m`` (N,) in metres, the
    ``probe`` ([OPR, modes, H, W], 2-D and 3-D accepted) and the ``object`` ([layers, Ho, Wo],
    attributes ``center_x_m``, ``center_y_m``, ``pixel_width_m``, ``pixel_height_m``).
``diffraction.h5``
    ``patterns`` (M, H, W) photon counts of any dtype, ``indexes`` (M,) and
    ``bad_pixels`` (H, W) bool.

Pairing
-------
Pattern indexes are authoritative, as in Ptychodus's own ``prepare_reconstruct_input``: a
position index that occurs more than once is averaged, a pattern whose index lies between two
position indexes gets a linearly interpolated position, and patterns outside the range of
position indexes are dropped (with a warning).

Coordinates
-----------
Ptychodus puts object pixel ``j`` at ``center_x_m + (j - (Wo - 1) / 2) * pixel_width_m``, so a
probe position ``x_m`` sits at the continuous object pixel
``x_px = (x_m - center_x_m) / pixel_width_m + (Wo - 1) / 2`` (same for y). Its H x H probe is
centred on its pixel ``(H - 1) / 2``: probe pixel ``i`` illuminates object pixel
``x_px - (H - 1) / 2 + i`` (``ProbeGeometry.resolve_patch_bounds``). In :class:`ScanData`
patch pixel ``i`` is object pixel ``p - H // 2 + i``. The two agree when

    ``p = x_px + H // 2 - (H - 1) / 2``,

that is ``p = x_px + 0.5`` for the usual even H (and ``p = x_px`` for odd H). Reading adds this
offset, writing removes it, so positions survive a round trip exactly (float64).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptychopinn.errors import DataError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.hdf5 import check_stored_inside
from ptychopinn.io.paths import check_regular_file
from ptychopinn.io.scan import ScanData
from ptychopinn.io.units import object_pixel_size_m

if TYPE_CHECKING:
    import h5py

    from ptychopinn.reconstruction import Reconstruction

logger = logging.getLogger(__name__)

PRODUCT_NAME = "product.h5"
DIFFRACTION_NAME = "diffraction.h5"

#: Diffraction stacks up to this size are loaded into memory; larger ones stream from the file.
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3
#: Relative disagreement between the object pixel size and lambda z / (H p_det) that is reported.
_PIXEL_SIZE_TOLERANCE = 0.01


def center_offset_px(n: int) -> float:
    """``p - x_px``: our patch-centre position minus Ptychodus's, for H = W = ``n``.

    >>> center_offset_px(64), center_offset_px(33)
    (0.5, 0.0)
    """
    return n // 2 - (n - 1) / 2


def ptychodus_to_scan_px(
    x_m: np.ndarray, center_m: float, pixel_m: float, size: int, n: int
) -> np.ndarray:
    """Metres on a Ptychodus object axis -> ScanData object pixels (see module notes).

    >>> float(ptychodus_to_scan_px(np.array(0.0), 0.0, 1e-8, 101, 64))
    50.5
    """
    x_px = (np.asarray(x_m, dtype=np.float64) - center_m) / pixel_m + (size - 1) / 2
    return x_px + center_offset_px(n)


def scan_px_to_ptychodus(
    p: np.ndarray, center_m: float, pixel_m: float, size: int, n: int
) -> np.ndarray:
    """Inverse of :func:`ptychodus_to_scan_px`: ScanData object pixels -> metres.

    >>> float(scan_px_to_ptychodus(np.array(50.5), 0.0, 1e-8, 101, 64))
    0.0
    """
    x_px = np.asarray(p, dtype=np.float64) - center_offset_px(n)
    return (x_px - (size - 1) / 2) * pixel_m + center_m


def resolve_pair(
    path: str | os.PathLike[str], diffraction_path: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """(product, diffraction) paths from a directory, a product or a diffraction file.

    A directory must hold ``product.h5`` and ``diffraction.h5``; a single file is paired
    with the other file of the standard name beside it (which one it is, is read from its
    content).
    """
    p = Path(path)
    if p.is_dir():
        product, diffraction = p / PRODUCT_NAME, p / DIFFRACTION_NAME
    else:
        if not p.exists():
            raise DataError(f"{p}: file not found")
        if _is_diffraction_file(p):
            product, diffraction = p.parent / PRODUCT_NAME, p
        else:
            product, diffraction = p, p.parent / DIFFRACTION_NAME
    if diffraction_path is not None:
        diffraction = Path(diffraction_path)
    for name, f in (("product", product), ("diffraction", diffraction)):
        if not f.is_file():
            raise DataError(
                f"{f}: Ptychodus {name} file not found (a product.h5 needs its diffraction.h5; "
                "pass both or put them in one directory)"
            )
    return product, diffraction


def _h5py() -> Any:
    with contextlib.suppress(ImportError):  # extra HDF5 filters (bitshuffle, LZ4, ...)
        import hdf5plugin  # noqa: F401
    import h5py

    return h5py


def _open(path: Path) -> h5py.File:
    check_regular_file(path, "an HDF5 file")
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _is_diffraction_file(path: Path) -> bool:
    try:
        with _open(path) as f:
            return "patterns" in f and "probe" not in f
    except DataError:
        return False


def _dataset(path: Path, f: h5py.File, key: str) -> Any:
    h5py = _h5py()
    if key not in f:
        raise DataError(f"{path}: missing dataset '{key}'; found {sorted(f.keys())}")
    ds = f[key]
    if not isinstance(ds, h5py.Dataset):
        raise DataError(f"{path}: '{key}' is not a dataset")
    check_stored_inside(path, key, ds)
    return ds


def _attr(path: Path, obj: Any, key: str, where: str) -> float:
    if key not in obj.attrs:
        raise DataError(f"{path}: {where}: missing attribute '{key}'")
    try:
        value = float(np.asarray(obj.attrs[key]))
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: {where}.{key}: expected a number, got {_plain(obj.attrs[key])!r}"
        ) from exc
    if not math.isfinite(value):
        raise DataError(f"{path}: {where}.{key}: expected a finite number, got {value}")
    return value


def _plain(value: Any) -> Any:
    """HDF5 attribute value -> JSON-friendly Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _real(path: Path, name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise DataError(f"{path}: {name}: expected real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _pair_positions(
    source: str,
    pattern_indexes: np.ndarray,
    position_indexes: np.ndarray,
    x_m: np.ndarray,
    y_m: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept pattern rows, x_m, y_m) paired by index, as Ptychodus pairs them."""
    unique, inverse = np.unique(position_indexes, return_inverse=True)
    counts = np.bincount(inverse)
    mean_x = np.bincount(inverse, weights=x_m) / counts
    mean_y = np.bincount(inverse, weights=y_m) / counts
    keep = (pattern_indexes >= unique[0]) & (pattern_indexes <= unique[-1])
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise DataError(
            f"{source}: no probe position index matches a pattern index: patterns span "
            f"[{pattern_indexes.min()}, {pattern_indexes.max()}], positions span "
            f"[{unique[0]}, {unique[-1]}]"
        )
    kept = pattern_indexes[rows]
    n_dropped = pattern_indexes.size - rows.size
    n_averaged = position_indexes.size - unique.size
    n_interpolated = int(np.count_nonzero(~np.isin(kept, unique)))
    if n_dropped or n_interpolated or n_averaged:
        logger.warning(
            "%s: paired %d of %d patterns with positions (%d dropped outside the position "
            "indexes, %d interpolated, %d duplicate positions averaged)",
            source,
            rows.size,
            pattern_indexes.size,
            n_dropped,
            n_interpolated,
            n_averaged,
        )
    return rows, np.interp(kept, unique, mean_x), np.interp(kept, unique, mean_y)


def _check_pixel_size(
    source: str, attrs: dict[str, Any], n: int, detector_px_m: float | None, object_px_m: float
) -> None:
    """Warn when the object pixel size disagrees with lambda z / (n p_detector)."""
    energy = attrs.get("photon_energy_eV", attrs.get("probe_energy_eV"))
    distance = attrs.get("detector_object_distance_m")
    if not (energy and distance and detector_px_m) or not attrs.get("far_field", True):
        return
    expected = object_pixel_size_m(float(energy), float(distance), detector_px_m, n)
    if abs(object_px_m / expected - 1.0) > _PIXEL_SIZE_TOLERANCE:
        logger.warning(
            "%s: object pixel size %.4g m differs from lambda z / (N p_detector) = %.4g m "
            "(far field, N = %d): check the energy, distance and detector pixel size",
            source,
            object_px_m,
            expected,
            n,
        )


@dataclass
class _Product:
    """What ``product.h5`` holds, checked: its attributes, object, probe and positions."""

    path: Path
    attrs: dict[str, Any]
    object: np.ndarray  # (layers, H, W) complex
    geometry: dict[str, float]  # center_x_m, center_y_m, pixel_width_m, pixel_height_m
    probe: np.ndarray  # (P, H, W) complex
    probe_pixel_m: float
    position_indexes: np.ndarray  # (K,) int
    x_m: np.ndarray  # (K,)
    y_m: np.ndarray  # (K,)


def _read_product(product: Path) -> _Product:
    with _open(product) as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        obj_ds = _dataset(product, f, "object")
        geometry = {
            key: _attr(product, obj_ds, key, "object")
            for key in ("center_x_m", "center_y_m", "pixel_width_m", "pixel_height_m")
        }
        obj = np.asarray(obj_ds[()])
        probe_ds = _dataset(product, f, "probe")
        probe = np.asarray(probe_ds[()])
        probe_px_m = float(np.asarray(probe_ds.attrs.get("pixel_width_m", np.nan)))
        position_indexes = np.asarray(_dataset(product, f, "probe_position_indexes")[()])
        x_m = _real(product, "probe_position_x_m", _dataset(product, f, "probe_position_x_m")[()])
        y_m = _real(product, "probe_position_y_m", _dataset(product, f, "probe_position_y_m")[()])
    if obj.ndim == 2:
        obj = obj[None]
    if obj.ndim != 3 or obj.shape[0] < 1 or obj.dtype.kind != "c":
        raise DataError(
            f"{product}: object: expected complex [layers, H, W], got {obj.dtype} {obj.shape}"
        )
    if obj.shape[0] > 1:
        logger.warning("%s: object has %d layers; using layer 0", product, obj.shape[0])
    if probe.ndim == 4:
        if probe.shape[0] > 1:
            logger.warning("%s: probe has %d OPR modes; using the first", product, probe.shape[0])
        probe = probe[0]
    for pixel_key in ("pixel_width_m", "pixel_height_m"):
        if not geometry[pixel_key] > 0:
            raise DataError(
                f"{product}: object.{pixel_key}: expected > 0, got {geometry[pixel_key]}"
            )
    if position_indexes.ndim != 1 or position_indexes.dtype.kind not in "iu":
        raise DataError(
            f"{product}: probe_position_indexes: expected 1-D integers, got "
            f"{position_indexes.dtype} {position_indexes.shape}"
        )
    if x_m.shape != position_indexes.shape or y_m.shape != position_indexes.shape:
        raise DataError(
            f"{product}: probe_position_x_m/_y_m: expected shape {position_indexes.shape}, got "
            f"{x_m.shape} and {y_m.shape}"
        )
    if position_indexes.size == 0:
        raise DataError(f"{product}: probe_position_indexes: no positions")
    return _Product(product, attrs, obj, geometry, probe, probe_px_m, position_indexes, x_m, y_m)


def _read_diffraction(
    diffraction: Path, product: _Product, source: str
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, float | None]:
    """The patterns paired with the product's positions.

    Returns the stack (in memory, or streamed from the file when large and complete), the
    paired rows, their x and y positions (metres), the pattern indexes, the bad-pixel mask and
    the detector pixel width.
    """
    h5 = _open(diffraction)
    try:
        patterns = _dataset(diffraction, h5, "patterns")
        pattern_indexes = np.asarray(_dataset(diffraction, h5, "indexes")[()])
        bad_pixels = np.asarray(h5["bad_pixels"][()]) if "bad_pixels" in h5 else None
        detector_px_m = patterns.attrs.get("detector_pixel_width_m")
        if pattern_indexes.dtype.kind not in "iu":
            raise DataError(
                f"{diffraction}: indexes: expected integers, got dtype {pattern_indexes.dtype}"
            )
        if patterns.ndim != 3 or patterns.shape[0] == 0:
            raise DataError(
                f"{diffraction}: patterns: expected (M, H, W) with M >= 1, got {patterns.shape}"
            )
        if pattern_indexes.shape != (patterns.shape[0],):
            raise DataError(
                f"{diffraction}: expected patterns (M, H, W) and indexes (M,), got "
                f"{patterns.shape} and {pattern_indexes.shape}"
            )
        rows, x_sel, y_sel = _pair_positions(
            source, pattern_indexes, product.position_indexes, product.x_m, product.y_m
        )
        identity = rows.size == patterns.shape[0]
        nbytes = rows.size * int(np.prod(patterns.shape[1:])) * patterns.dtype.itemsize
        if identity and nbytes > IN_MEMORY_LIMIT_BYTES:
            from ptychopinn.io.hdf5 import H5Array

            stack: Any = H5Array(diffraction, "patterns")  # streams; reopened per process
        else:
            stack = np.asarray(patterns[()]) if identity else np.asarray(patterns[()])[rows]
    finally:
        h5.close()
    detector = float(detector_px_m) if detector_px_m is not None else None
    return stack, rows, x_sel, y_sel, pattern_indexes, bad_pixels, detector


def read_scan(
    product_path: str | os.PathLike[str],
    diffraction_path: str | os.PathLike[str] | None = None,
) -> ScanData:
    """Read a Ptychodus ``product.h5`` + ``diffraction.h5`` pair into a :class:`ScanData`.

    Parameters
    ----------
    product_path : ``product.h5``, its ``diffraction.h5``, or the directory holding both
    diffraction_path : the diffraction file, when not beside the product under its standard name

    The patterns are photon counts (``units="counts"``, any dtype). Positions are converted to
    object pixels of the product's object (layer 0 becomes ``object`` when every patch lies on
    it); ``metadata["ptychodus"]`` keeps the product's attributes, object geometry and the
    position index of every pattern, which :func:`write_product` uses.

    Shapes
    ------
    diffraction (M, H, H); positions_px (M, 2) (y, x); probe (P, H, H)
    """
    given = Path(product_path)
    if given.is_file():
        with _open(given):  # a damaged or non-HDF5 file is named before its companion is sought
            pass
    product_file, diffraction = resolve_pair(product_path, diffraction_path)
    source = f"{product_file} + {diffraction.name}"
    product = _read_product(product_file)
    stack, rows, x_sel, y_sel, indexes, bad_pixels, detector_m = _read_diffraction(
        diffraction, product, source
    )
    n = int(stack.shape[-1])
    g = product.geometry
    _, ho, wo = product.object.shape
    pos_y = ptychodus_to_scan_px(y_sel, g["center_y_m"], g["pixel_height_m"], ho, n)
    pos_x = ptychodus_to_scan_px(x_sel, g["center_x_m"], g["pixel_width_m"], wo, n)
    positions = np.stack([pos_y, pos_x], axis=1)
    _check_pixel_size(source, product.attrs, n, detector_m, g["pixel_width_m"])
    probe_m = product.probe_pixel_m
    if math.isfinite(probe_m) and abs(probe_m / g["pixel_width_m"] - 1) > 1e-6:
        logger.warning(
            "%s: probe pixel width %.4g m differs from the object pixel width %.4g m",
            product_file, probe_m, g["pixel_width_m"],
        )  # fmt: skip
    reference: np.ndarray | None = product.object[0]
    lo = np.floor(positions.min(axis=0)) - n // 2
    hi = np.ceil(positions.max(axis=0)) - n // 2 + n
    if lo.min() < 0 or hi[0] > ho or hi[1] > wo:
        logger.warning(
            "%s: some patches leave the %dx%d object; the object is not used as a reference",
            product_file, ho, wo,
        )  # fmt: skip
        reference = None
    metadata = {
        "ptychodus": {
            "product": str(product_file),
            "diffraction": str(diffraction),
            "attrs": product.attrs,
            "object_shape": [int(ho), int(wo)],
            "object_pixel_size_m": [g["pixel_height_m"], g["pixel_width_m"]],
            "object_center_m": [g["center_y_m"], g["center_x_m"]],
            "position_indexes": indexes[rows].astype(np.int64).tolist(),
        },
    }
    logger.info(
        "%s: %d patterns of %dx%d, object %dx%d at %.4g m/px",
        source, rows.size, n, n, ho, wo, g["pixel_width_m"],
    )  # fmt: skip
    return ScanData(
        diffraction=stack,
        units="counts",
        positions_px=positions,
        probe=product.probe,
        object=reference,
        bad_pixels=bad_pixels,
        pixel_size_m=g["pixel_width_m"],
        source=source,
        metadata=metadata,
    )


def _positions_for_product(
    template: Path,
    scan: ScanData | None,
    geom: dict[str, float],
    shape: tuple[int, ...],
    indexes: np.ndarray,
    x_m: np.ndarray,
    y_m: np.ndarray,
    extra: dict[str, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positions to write: the scan's (in metres, with its position indexes) when it was
    read from a Ptychodus product, else the template's. ``extra``'s photon counts follow the
    indexes."""
    ho, wo = shape
    meta = (scan.metadata.get("ptychodus") if scan is not None else None) or {}
    if scan is not None and meta:
        if list(meta.get("object_shape", [])) != [ho, wo]:
            raise DataError(
                f"{template}: object is {ho}x{wo} but the scan was read from a product with "
                f"object {meta.get('object_shape')}"
            )
        n = scan.N
        y_m = scan_px_to_ptychodus(
            scan.positions_px[:, 0], geom["center_y_m"], geom["pixel_height_m"], ho, n
        )
        x_m = scan_px_to_ptychodus(
            scan.positions_px[:, 1], geom["center_x_m"], geom["pixel_width_m"], wo, n
        )
        new_indexes = np.asarray(meta["position_indexes"], dtype=np.int64)
        counts = extra.pop("probe_photon_counts", None)
        if counts is not None and counts.shape == indexes.shape:  # keyed by position index
            by_index = dict(zip(indexes.tolist(), counts.tolist(), strict=True))
            if all(i in by_index for i in new_indexes.tolist()):
                extra["probe_photon_counts"] = np.asarray([by_index[i] for i in new_indexes])
        indexes = new_indexes
    elif scan is not None:
        logger.warning(
            "%s: the scan was not read from a Ptychodus product; writing the template's positions",
            scan.source,
        )
    return indexes, x_m, y_m


def write_product(
    path: str | os.PathLike[str],
    reconstruction: Reconstruction,
    template_product: str | os.PathLike[str],
    *,
    scan: ScanData | None = None,
    name: str | None = None,
) -> Path:
    """Write a reconstruction as a Ptychodus product that Ptychodus 1.7.0 loads.

    Parameters
    ----------
    path : the product file to write (atomically)
    reconstruction : the stitched object; it is pasted onto the template's object grid
    template_product : the product the scan came from; its attributes, probe and object
        geometry (shape, pixel size, centre) are kept
    scan : when given and read by :func:`read_scan`, its positions (possibly refined) are
        written back in metres with their position indexes; otherwise the template's
        positions are copied
    name : product name (default: the template's with ``_ptychopinn`` appended)

    The datasets and attributes are those of Ptychodus's ``save_product``; the object is a
    single complex64 layer, the loss history empty.
    """
    from ptychopinn import __version__

    h5py = _h5py()
    template = Path(template_product)
    if not template.is_file():
        raise DataError(f"{template}: template product not found")
    with _open(template) as f:
        attrs = dict(f.attrs.items())
        obj_ds = _dataset(template, f, "object")
        obj_attrs = dict(obj_ds.attrs.items())
        geom = {
            key: _attr(template, obj_ds, key, "object")
            for key in ("center_x_m", "center_y_m", "pixel_width_m", "pixel_height_m")
        }
        shape = tuple(int(v) for v in obj_ds.shape[-2:])
        probe_ds = _dataset(template, f, "probe")
        probe = np.asarray(probe_ds[()])
        probe_attrs = dict(probe_ds.attrs.items())
        extra = {
            key: np.asarray(f[key][()])
            for key in ("opr_weights", "probe_photon_counts")
            if key in f
        }
        indexes = np.asarray(_dataset(template, f, "probe_position_indexes")[()])
        x_m = np.asarray(_dataset(template, f, "probe_position_x_m")[()], dtype=np.float64)
        y_m = np.asarray(_dataset(template, f, "probe_position_y_m")[()], dtype=np.float64)
    ho, wo = shape
    indexes, x_m, y_m = _positions_for_product(
        template, scan, geom, shape, indexes, x_m, y_m, extra
    )
    obj = reconstruction.on_object_grid((ho, wo))[None]  # (1, Ho, Wo)
    attrs["name"] = (
        name if name is not None else f"{_plain(attrs.get('name', 'product'))}_ptychopinn"
    )
    comments = str(_plain(attrs.get("comments", "")))
    note = f"object reconstructed by ptychopinn {__version__}"
    attrs["comments"] = f"{comments}\n{note}" if comments else note
    target = Path(path)
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as out:
        for key, value in attrs.items():
            out.attrs[key] = value
        out.create_dataset("probe_position_indexes", data=indexes)
        out.create_dataset("probe_position_x_m", data=np.asarray(x_m, dtype=np.float64))
        out.create_dataset("probe_position_y_m", data=np.asarray(y_m, dtype=np.float64))
        if "probe_photon_counts" in extra:
            out.create_dataset("probe_photon_counts", data=extra["probe_photon_counts"])
        h5_probe = out.create_dataset("probe", data=probe)
        for key, value in probe_attrs.items():
            h5_probe.attrs[key] = value
        if "opr_weights" in extra:
            out.create_dataset("opr_weights", data=extra["opr_weights"])
        h5_object = out.create_dataset("object", data=obj.astype(np.complex64))
        for key, value in obj_attrs.items():
            h5_object.attrs[key] = value
        out.create_dataset("object_layer_spacing_m", data=np.zeros(0, dtype=np.float64))
        out.create_dataset("loss_epochs", data=np.zeros(0, dtype=np.int64))
        out.create_dataset("loss_values", data=np.zeros(0, dtype=np.float64))
    logger.info("wrote %s (object %dx%d, %d positions)", target, ho, wo, indexes.size)
    return target
