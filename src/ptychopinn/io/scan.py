"""``ScanData``: the one validated value object every reader produces.

Conventions
-----------
* ``diffraction`` is (M, N, N) with DC at the array centre, either photon counts
  (``units="counts"``) or amplitudes = sqrt(counts) (``units="amplitude"``).
  It may be any array-like with ``shape``, ``dtype`` and fancy ``__getitem__``
  (NumPy array, ``np.memmap``, ``h5py.Dataset``) so large scans stream.
* ``positions_px`` is (M, 2) ordered (y, x) = (row, column) in object pixels:
  the centre of each N x N patch on the object grid. Patch pixel ``i`` maps to
  object pixel ``position - N // 2 + i``.
* ``probe`` is (P, N, N) complex64, P incoherent modes.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ptychopinn.errors import DataError

logger = logging.getLogger(__name__)

Units = Literal["amplitude", "counts"]

#: Patterns checked at a time when validating a large (possibly on-disk) stack.
_VALIDATION_CHUNK = 4096
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Positions beyond this many pixels lose sub-pixel precision in float32 (and no canvas fits).
_MAX_POSITION_PX = 2.0**24


@dataclass(frozen=True, eq=False)
class ScanData:
    """A ptychographic scan, validated on construction.

    Shapes
    ------
    diffraction : (M, N, N) real, counts or amplitude
    positions_px : (M, 2) float64, (y, x)
    probe : (P, N, N) complex64
    object : (Ho, Wo) complex64 or None
    nominal_positions_px : (M, 2) float64
    scan_index : (M,) int64
    patches : (M, N, N) complex64 or None  (ground-truth object patches ``Y``)
    bad_pixels : (N, N) bool or None
    pixel_size_m : object pixel size in metres, when the geometry is known
    background : (N, N) float32 or None: the detector background every pattern holds, in the
        data's intensity units (counts, or amplitude squared); the likelihood adds it to the
        model's intensity (a number is a constant background)
    """

    diffraction: Any
    positions_px: np.ndarray
    probe: np.ndarray
    units: Units = "amplitude"
    object: np.ndarray | None = None
    nominal_positions_px: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    patches: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None
    pixel_size_m: float | None = None
    background: np.ndarray | None = None
    source: str = "<memory>"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        src = self.source
        d = self.diffraction
        if not hasattr(d, "shape") or not hasattr(d, "dtype"):
            raise DataError(f"{src}: diffraction: expected an array, got {type(d).__name__}")
        if len(d.shape) != 3:
            raise DataError(
                f"{src}: diffraction: expected 3 dimensions (M, N, N), got shape {tuple(d.shape)}"
            )
        m, h, w = (int(v) for v in d.shape)
        if m == 0:
            raise DataError(f"{src}: diffraction: expected at least 1 pattern, got 0")
        if h != w:
            raise DataError(f"{src}: diffraction: expected square patterns (H = W), got {h}x{w}")
        if h < 4:
            raise DataError(f"{src}: diffraction: expected patterns of at least 4x4, got {h}x{w}")
        if np.dtype(d.dtype).kind not in "uif":
            raise DataError(
                f"{src}: diffraction: expected a real integer or float dtype, got {d.dtype}"
            )
        if self.units not in ("amplitude", "counts"):
            raise DataError(f"{src}: units: expected 'amplitude' or 'counts', got {self.units!r}")
        _check_stack_values(src, d)

        pos = _real_array(src, "positions_px", self.positions_px, (m, 2))
        object.__setattr__(self, "positions_px", pos)
        nominal = self.nominal_positions_px
        nominal = (
            pos.copy()
            if nominal is None
            else _real_array(src, "nominal_positions_px", nominal, (m, 2))
        )
        object.__setattr__(self, "nominal_positions_px", nominal)

        probe = np.asarray(self.probe)
        if probe.ndim == 2:
            probe = probe[None]
        if probe.ndim == 4 and probe.shape[0] == 1:  # Ptychodus [OPR, modes, H, W]
            probe = probe[0]
        if probe.ndim != 3 or probe.shape[1:] != (h, w):
            raise DataError(
                f"{src}: probeGuess: expected shape ({h}, {w}) or (P, {h}, {w}) to match the "
                f"diffraction patterns, got {probe.shape}"
            )
        if probe.dtype.kind not in "cf":
            raise DataError(f"{src}: probeGuess: expected a complex array, got dtype {probe.dtype}")
        probe = _complex64(src, "probeGuess", probe)
        if not np.any(probe != 0):
            raise DataError(f"{src}: probeGuess: is all zeros")
        object.__setattr__(self, "probe", probe)

        if self.object is not None:
            obj = np.asarray(self.object)
            if obj.ndim == 3 and obj.shape[0] == 1:
                obj = obj[0]
            if obj.ndim != 2:
                raise DataError(f"{src}: objectGuess: expected 2 dimensions, got shape {obj.shape}")
            if obj.dtype.kind not in "cf":
                raise DataError(f"{src}: objectGuess: expected complex, got dtype {obj.dtype}")
            object.__setattr__(self, "object", _complex64(src, "objectGuess", obj))
            _check_positions_on_object(src, pos, h, obj.shape)

        if self.scan_index is None:
            object.__setattr__(self, "scan_index", np.zeros(m, dtype=np.int64))
        else:
            idx = np.asarray(self.scan_index)
            if idx.shape != (m,) or idx.dtype.kind not in "iu":
                raise DataError(
                    f"{src}: scan_index: expected integer shape ({m},), got {idx.dtype} {idx.shape}"
                )
            object.__setattr__(self, "scan_index", idx.astype(np.int64))

        if self.patches is not None:
            y = np.asarray(self.patches)
            if y.shape != (m, h, w):
                raise DataError(f"{src}: Y: expected shape ({m}, {h}, {w}), got {y.shape}")
            if y.dtype.kind not in "cf":
                raise DataError(f"{src}: Y: expected complex, got dtype {y.dtype}")
            object.__setattr__(self, "patches", _complex64(src, "Y", y))

        if self.bad_pixels is not None:
            bad = np.asarray(self.bad_pixels)
            if bad.shape != (h, w) or bad.dtype.kind not in "biu":
                raise DataError(
                    f"{src}: bad_pixels: expected a boolean or integer ({h}, {w}) mask, "
                    f"got {bad.dtype} {bad.shape}"
                )
            object.__setattr__(self, "bad_pixels", bad.astype(bool))

        self._check_detector_extras(h, w)

    def _check_detector_extras(self, h: int, w: int) -> None:
        """The optional background and object pixel size, normalised in place."""
        src = self.source
        if self.background is not None:
            bg = np.asarray(self.background)
            if bg.ndim == 0 or bg.size == 1:
                bg = np.full((h, w), float(bg.reshape(())) if bg.dtype.kind in "uif" else np.nan)
            if bg.shape != (h, w) or bg.dtype.kind not in "uif" or not np.all(np.isfinite(bg)):
                raise DataError(
                    f"{src}: background: expected a finite number or ({h}, {w}) array of "
                    f"intensities, got {bg.dtype} {bg.shape}"
                )
            if bg.min() < 0:
                raise DataError(f"{src}: background: expected >= 0, got minimum {bg.min():g}")
            object.__setattr__(self, "background", bg.astype(np.float32))

        if self.pixel_size_m is not None:
            size = np.asarray(self.pixel_size_m)
            if (
                size.size != 1
                or size.dtype.kind not in "uif"
                or not np.isfinite(size).all()
                or (float(size.reshape(())) <= 0)
            ):
                raise DataError(
                    f"{src}: pixel_size_m: expected one positive number (metres), got "
                    f"{self.pixel_size_m!r}"
                )
            object.__setattr__(self, "pixel_size_m", float(size.reshape(())))

    # -- derived facts -----------------------------------------------------------------------
    @property
    def n_patterns(self) -> int:
        return int(self.diffraction.shape[0])

    @property
    def N(self) -> int:  # noqa: N802
        return int(self.diffraction.shape[1])

    @property
    def n_probe_modes(self) -> int:
        return int(self.probe.shape[0])

    @property
    def good_pixels(self) -> np.ndarray | None:
        """(N, N) float32, 1 where the detector is good and 0 at ``bad_pixels``; None if none."""
        if self.bad_pixels is None or not self.bad_pixels.any():
            return None
        return (~self.bad_pixels).astype(np.float32)

    def amplitudes(self, index: np.ndarray | slice | None = None) -> np.ndarray:
        """Diffraction amplitudes sqrt(counts) as float32, 0 at ``bad_pixels``.

        Bad pixels read 0 for the network, and every likelihood leaves them out
        (:attr:`good_pixels`), so a dead or hot pixel neither misleads nor counts.

        Parameters
        ----------
        index : array of pattern indices, slice, or None for all.

        Shapes
        ------
        returns (K, N, N) float32
        """
        if index is None:
            raw = np.asarray(self.diffraction[:])
        elif isinstance(index, slice):
            raw = np.asarray(self.diffraction[index])
        else:
            raw = take(self.diffraction, index)
        raw = raw.astype(np.float32, copy=False)
        amplitude = np.sqrt(raw) if self.units == "counts" else raw
        if self.bad_pixels is not None and self.bad_pixels.any():
            amplitude = np.where(self.bad_pixels, np.float32(0), amplitude)
        return amplitude

    def mean_total_intensity(self, max_patterns: int = 4096) -> float:
        """Mean over patterns of the summed intensity sum(amplitude**2) (photons if counts)."""
        cache = self.__dict__.setdefault("_mean_total_cache", {})  # one read per scan object
        if max_patterns not in cache:
            cache[max_patterns] = self._mean_total_intensity(max_patterns)
        return float(cache[max_patterns])

    def _mean_total_intensity(self, max_patterns: int) -> float:
        m = self.n_patterns
        if m <= max_patterns:
            idx = np.arange(m)
        else:
            idx = np.linspace(0, m - 1, max_patterns).round().astype(np.int64)
        total = 0.0
        for start in range(0, idx.size, _MEAN_BLOCK):  # a few patterns at a time from disk
            block = idx[start : start + _MEAN_BLOCK]
            rows = slice(int(block[0]), int(block[-1]) + 1) if m <= max_patterns else block
            amp = self.amplitudes(rows)
            total += float(np.sum(amp.astype(np.float64) ** 2))
        return total / max(idx.size, 1)

    def subset(self, index: np.ndarray) -> ScanData:
        """A new ScanData holding the patterns ``index`` (loaded into memory)."""
        index = np.asarray(index, dtype=np.int64)
        return dataclasses.replace(
            self,
            diffraction=take(self.diffraction, index),
            positions_px=self.positions_px[index],
            nominal_positions_px=self.nominal_positions_px[index]
            if self.nominal_positions_px is not None
            else None,
            scan_index=self.scan_index[index] if self.scan_index is not None else None,
            patches=self.patches[index] if self.patches is not None else None,
        )


#: Patterns read at a time by :meth:`ScanData.mean_total_intensity`.
_MEAN_BLOCK = 64


def concatenate(scans: list[ScanData]) -> ScanData:
    """One scan of every pattern of ``scans``, in memory, their ``scan_index`` kept: the
    first scan's probe, mask and background, and its reference object when every scan
    carries the same one."""
    first = scans[0]
    if len(scans) == 1:
        return first
    nominal = [s.nominal_positions_px for s in scans]
    known = [v for v in nominal if v is not None]
    return dataclasses.replace(
        first,
        diffraction=np.concatenate([np.asarray(s.diffraction[:]) for s in scans]),
        positions_px=np.concatenate([s.positions_px for s in scans]),
        nominal_positions_px=np.concatenate(known) if len(known) == len(scans) else None,
        scan_index=np.concatenate([np.asarray(s.scan_index) for s in scans]),
        object=first.object if all(same_object(s, first) for s in scans) else None,
        patches=None,
        source=f"{first.source} + {len(scans) - 1} more",
    )


def same_object(scan: ScanData, first: ScanData) -> bool:
    """Whether both scans carry the same reference object."""
    return (
        scan.object is not None
        and first.object is not None
        and scan.object.shape == first.object.shape
        and bool(np.array_equal(scan.object, first.object))
    )


def take(array: Any, index: np.ndarray) -> np.ndarray:
    """``array[index]`` along axis 0 for NumPy arrays and h5py datasets alike.

    h5py accepts only increasing, unique indices, so these are sorted and the
    result put back in the order asked for.
    """
    index = np.asarray(index, dtype=np.int64)
    if isinstance(array, np.ndarray):
        return array[index]
    unique, inverse = np.unique(index, return_inverse=True)
    return np.asarray(array[unique])[inverse]


def _real_array(src: str, name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "uif":
        raise DataError(f"{src}: {name}: expected a real numeric array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise DataError(f"{src}: {name}: expected shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{src}: {name}: contains NaN or Inf")
    if arr.size and np.abs(arr).max() > _MAX_POSITION_PX:
        raise DataError(
            f"{src}: {name}: expected positions within +-{_MAX_POSITION_PX:.0f} px, "
            f"got {np.abs(arr).max():g}"
        )
    return arr.astype(np.float64)


def _complex64(src: str, name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as complex64, refusing NaN/Inf and values beyond the float32 range."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.complex64)
    if not np.all(np.isfinite(out)):
        what = "NaN or Inf" if not np.all(np.isfinite(arr)) else "values beyond the float32 range"
        raise DataError(f"{src}: {name}: contains {what}")
    return out


def _check_stack_values(src: str, d: Any) -> None:
    m = int(d.shape[0])
    for start in range(0, m, _VALIDATION_CHUNK):
        block = np.asarray(d[start : start + _VALIDATION_CHUNK])
        if block.dtype.kind == "f" and not np.all(np.isfinite(block)):
            bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
            raise DataError(f"{src}: diffraction: contains NaN or Inf (first at pattern {bad})")
        if block.dtype.kind in "if" and np.any(block < 0):
            bad = start + int(np.argwhere(block < 0)[0][0])
            raise DataError(
                f"{src}: diffraction: expected non-negative values, got {block.min()} "
                f"(first at pattern {bad})"
            )
        if block.dtype.kind == "f" and block.size and block.max() > _FLOAT32_MAX:
            raise DataError(
                f"{src}: diffraction: expected values within the float32 range, got {block.max():g}"
            )


def _check_positions_on_object(
    src: str, pos: np.ndarray, n: int, object_shape: tuple[int, ...]
) -> None:
    ho, wo = object_shape
    lo = np.floor(pos.min(axis=0)) - n // 2
    hi = np.ceil(pos.max(axis=0)) - n // 2 + n
    if lo[0] < 0 or lo[1] < 0 or hi[0] > ho or hi[1] > wo:
        raise DataError(
            f"{src}: xcoords/ycoords: patches must lie on objectGuess of shape ({ho}, {wo}); "
            f"expected y in [{n // 2}, {ho - n + n // 2}] and x in [{n // 2}, {wo - n + n // 2}], "
            f"got y in [{pos[:, 0].min():.2f}, {pos[:, 0].max():.2f}] and "
            f"x in [{pos[:, 1].min():.2f}, {pos[:, 1].max():.2f}]"
        )
