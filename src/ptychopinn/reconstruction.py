"""The result of inference: a stitched object on the object pixel grid, and what made it.

:class:`Reconstruction` has a typed field for everything code reads (the pattern size, the
collapse flag, what refinement did); ``metadata`` is for people. ``save`` writes
``reconstruction.npz`` and the amplitude and phase PNGs; ``load`` reads a
``reconstruction.npz`` back, checking every key.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ptychopinn.errors import DataError
from ptychopinn.io.images import save_image
from ptychopinn.io.npz import load_npz_arrays, write_npz

#: Share of the largest coverage above which a pixel counts as well lit.
WELL_LIT = 0.1

OUTPUT_NAMES = ("reconstruction.npz", "reconstructed_amplitude.png", "reconstructed_phase.png")


@dataclass(frozen=True)
class RefinementRecord:
    """What likelihood refinement did to a reconstruction.

    Attributes
    ----------
    requested : ``"auto"`` or the number of passes asked for
    passes : passes over the patterns whose result was kept (0: the start was kept)
    stop_reason : why it stopped, in words
    start : ``network`` (the network's reconstruction) or ``flat``
    seconds : wall time of refinement
    network_nll : with ``auto``: mean Poisson NLL of the held-out patterns under the start
    final_nll : with ``auto``: the same under the result
    held_out_fraction : with ``auto``: share of the patterns held out to decide when to stop
    probe_refined : whether the probe was refined too
    positions_refined : whether the scan positions were corrected too (the reconstruction's
        ``positions_px`` are then the corrected ones)
    position_correction_rms_px : RMS of the corrections (pixels)
    r_factor : amplitude R-factor (sum |predicted - measured| / sum measured) of the kept
        pass over all patterns, measured during that pass (None: the start was kept)
    """

    requested: str
    passes: int
    stop_reason: str
    start: Literal["network", "flat"] = "network"
    seconds: float = 0.0
    network_nll: float | None = None
    final_nll: float | None = None
    held_out_fraction: float | None = None
    probe_refined: bool = False
    positions_refined: bool = False
    position_correction_rms_px: float | None = None
    r_factor: float | None = None


@dataclass(frozen=True)
class Reconstruction:
    """A stitched reconstruction on the object pixel grid.

    Attributes
    ----------
    object : (H, W) complex64; canvas pixel (r, c) is object pixel (r, c) + origin_px
    origin_px : object pixel of canvas pixel (0, 0)
    coverage : (H, W) float32, summed stitching weight (0 = not reconstructed)
    positions_px : (K, 2) float64, (y, x) object pixels of the patterns used
    N : pattern (and patch) size in pixels
    probe : (P, N, N) complex64 probe of the forward model (normalised units), or None
    pixel_size_m : object pixel size, when known
    collapsed : the network predicted nearly the same patch for every pattern
    refinement : what refinement did (None: the network alone)
    metadata : everything else, for people (JSON)
    """

    object: np.ndarray
    origin_px: tuple[int, int]
    coverage: np.ndarray
    positions_px: np.ndarray
    N: int
    probe: np.ndarray | None = None
    pixel_size_m: float | None = None
    collapsed: bool = False
    refinement: RefinementRecord | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def amplitude(self) -> np.ndarray:
        return np.abs(self.object)

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.object)

    def replace(self, **changes: Any) -> Reconstruction:
        return replace(self, **changes)

    def on_object_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """The reconstruction pasted into an array of the object's shape (zeros elsewhere)."""
        out = np.zeros(shape, dtype=np.complex64)
        r0, c0 = self.origin_px
        h, w = self.object.shape
        src_r0, src_c0 = max(0, -r0), max(0, -c0)
        dst_r0, dst_c0 = max(0, r0), max(0, c0)
        dst_r1, dst_c1 = min(shape[0], r0 + h), min(shape[1], c0 + w)
        if dst_r1 > dst_r0 and dst_c1 > dst_c0:
            out[dst_r0:dst_r1, dst_c0:dst_c1] = self.object[
                src_r0 : src_r0 + dst_r1 - dst_r0, src_c0 : src_c0 + dst_c1 - dst_c0
            ]
        return out

    def well_lit(self, fraction: float = WELL_LIT) -> np.ndarray:
        """(H, W) bool: pixels whose coverage is at least ``fraction`` of the largest (the
        region that sets the PNGs' display range; the barely lit border would darken it)."""
        top = float(self.coverage.max()) if self.coverage.size else 0.0
        return self.coverage >= fraction * top if top > 0 else self.coverage > 0

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``reconstruction.npz`` and the amplitude and phase PNGs, each atomically.

        The PNGs' display range is set by the well-lit pixels (:meth:`well_lit`); the phase
        PNG shows :func:`display_phase` (the npz keeps the phase as reconstructed)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "object": self.object,
            "amplitude": self.amplitude.astype(np.float32),
            "phase": self.phase.astype(np.float32),
            "coverage": self.coverage,
            "origin_px": np.asarray(self.origin_px, dtype=np.int64),
            "positions_px": self.positions_px,
            "xcoords": self.positions_px[:, 1],
            "ycoords": self.positions_px[:, 0],
            "N": np.asarray(self.N, dtype=np.int64),
            "collapsed": np.asarray(self.collapsed),
            "pixel_size_m": np.asarray(
                np.nan if self.pixel_size_m is None else self.pixel_size_m, dtype=np.float64
            ),
            "refinement": np.asarray(
                json.dumps(asdict(self.refinement) if self.refinement else None)
            ),
            "metadata": np.asarray(json.dumps(self.metadata, default=_plain)),
        }
        if self.probe is not None:
            arrays["probe"] = self.probe.astype(np.complex64)
        write_npz(out / "reconstruction.npz", arrays)
        paths = [out / "reconstruction.npz"]
        mask, lit = self.coverage > 0, self.well_lit()
        phase = display_phase(self.object, lit)
        for name, image, cmap, unit in (
            ("reconstructed_amplitude.png", self.amplitude, "gray", ""),
            ("reconstructed_phase.png", np.where(mask, phase, 0.0), "phase", "rad"),
        ):
            save_image(out / name, image, cmap, lit, unit, self.pixel_size_m)
            paths.append(out / name)
        return paths

    @classmethod
    def load(cls, path: str | Path) -> Reconstruction:
        """Read a ``reconstruction.npz`` (also one written before the typed fields)."""
        arrays = load_npz_arrays(path)
        for key in ("object", "origin_px", "coverage", "positions_px"):
            if key not in arrays:
                raise DataError(f"{path}: missing key '{key}' of a reconstruction.npz")
        try:
            return cls._from_arrays(path, arrays)
        except (TypeError, ValueError) as exc:  # values of the wrong kind (text for numbers, ...)
            if isinstance(exc, DataError):
                raise
            raise DataError(f"{path}: not a reconstruction.npz ({exc})") from exc

    @classmethod
    def _from_arrays(cls, path: str | Path, arrays: dict[str, Any]) -> Reconstruction:
        obj = np.asarray(arrays["object"])
        if obj.ndim != 2 or not np.iscomplexobj(obj):
            raise DataError(
                f"{path}: object: expected a 2-D complex array, got {obj.dtype} {obj.shape}"
            )
        coverage = np.asarray(arrays["coverage"], dtype=np.float32)
        if coverage.shape != obj.shape:
            raise DataError(
                f"{path}: coverage: expected shape {obj.shape} (the object's), got {coverage.shape}"
            )
        origin = np.asarray(arrays["origin_px"])
        positions = np.asarray(arrays["positions_px"], dtype=np.float64)
        if origin.shape != (2,) or positions.ndim != 2 or positions.shape[1:] != (2,):
            raise DataError(
                f"{path}: expected origin_px (2,) and positions_px (K, 2), got "
                f"{origin.shape} and {positions.shape}"
            )
        metadata = _json(path, arrays, "metadata") or {}
        metadata = metadata if isinstance(metadata, dict) else {}
        n = _integer(arrays["N"]) if "N" in arrays else metadata.get("N")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"{path}: missing the pattern size N of a reconstruction.npz")
        size = float(arrays["pixel_size_m"]) if "pixel_size_m" in arrays else math.nan
        refinement = _json(path, arrays, "refinement")
        try:
            record = RefinementRecord(**refinement) if refinement else None
        except TypeError as exc:
            raise DataError(f"{path}: refinement: not a refinement record ({exc})") from exc
        return cls(
            object=obj.astype(np.complex64),
            origin_px=(int(origin[0]), int(origin[1])),
            coverage=coverage,
            positions_px=positions,
            N=n,
            probe=arrays.get("probe"),
            pixel_size_m=None if math.isnan(size) else size,
            collapsed=bool(arrays["collapsed"])
            if "collapsed" in arrays
            else bool(metadata.get("collapsed", False)),
            refinement=record,
            metadata=metadata,
        )


def _integer(value: Any) -> int | None:
    array = np.asarray(value)
    return int(array) if array.shape == () and array.dtype.kind in "iu" else None


def _json(path: str | Path, arrays: dict[str, Any], key: str) -> Any:
    if key not in arrays:
        return None
    try:
        return json.loads(str(arrays[key]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(f"{path}: {key}: not valid JSON ({exc})") from exc


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def display_phase(obj: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """(H, W) phase of ``obj`` without its linear ramp and mean over the ``lit`` pixels.

    A reconstruction's global phase is arbitrary and a linear phase ramp is what a shift of
    the diffraction centre or of the probe makes, so neither is shown: the ramp is the mean
    phase difference between lit neighbours (computed on the complex products, so wraps do
    not bias it), and the phase is then centred on its mean. An object whose phases span
    less than 2 pi is shown without wraps.
    """
    if not lit.any():
        return np.angle(obj)
    pairs_y, pairs_x = lit[1:] & lit[:-1], lit[:, 1:] & lit[:, :-1]
    gy = np.angle(np.sum((obj[1:] * np.conj(obj[:-1]))[pairs_y])) if pairs_y.any() else 0.0
    gx = np.angle(np.sum((obj[:, 1:] * np.conj(obj[:, :-1]))[pairs_x])) if pairs_x.any() else 0.0
    yy, xx = np.mgrid[: obj.shape[0], : obj.shape[1]]
    flat = obj * np.exp(-1j * (gy * yy + gx * xx))
    return np.angle(flat * np.exp(-1j * np.angle(flat[lit].mean())))
