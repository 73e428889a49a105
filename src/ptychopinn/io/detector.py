"""Detector preparation: crop and bin a larger detector to N, find and correct the centre.

A far-field pattern of ``D x D`` pixels of side ``p`` samples the exit wave at
``lambda z / (D p)`` over a window of ``D`` such pixels. Cropping to ``C`` pixels around the
zero frequency keeps the window and makes the object pixels ``D / C`` times larger, so the
probe is resampled by cropping its far field (exact for the band that is kept) and the
positions, in object pixels, shrink by ``C / D``. Binning ``b x b`` pixels keeps the object
pixel and shrinks the window ``b`` times, so the probe is cropped in real space (the power it
loses is reported). Bad pixels stay bad: a binned pixel holding one is bad.

The zero frequency of the patterns need not sit on the pattern's centre pixel: the offset
left after cropping is measured against the probe's far field and given to the probe as a
linear phase ramp, which moves the model's far field onto the data's exactly (the object gets
no ramp).

Patterns are transformed as they are read (:class:`LazyPatterns`): converting a scan larger
than memory holds one batch at a time.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from ptychopinn.errors import ConfigError
from ptychopinn.io.scan import ScanData, take

logger = logging.getLogger(__name__)

#: Sub-pixel centre offsets below this are left alone.
CENTRE_TOLERANCE_PX = 0.1
#: Probe power lost by binning's real-space crop above which a warning is given.
PROBE_LOSS_WARNING = 0.01


class RowArray:
    """Base of the array-likes (M, H, W) read along axis 0 only: an int, a slice or an index
    array, as :class:`ptychopinn.io.scan.ScanData` and the writers read patterns. A subclass
    sets ``shape`` and ``dtype`` and reads the rows of a slice or an index array (``_rows``).
    """

    shape: tuple[int, int, int]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._rows(np.asarray([key]))[0]
        return self._rows(key)

    def _rows(self, key: slice | np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LazyPatterns(RowArray):
    """Array-like (M, n, n): ``fn`` applied to rows of ``base`` as they are read."""

    def __init__(
        self, base: Any, fn: Callable[[np.ndarray], np.ndarray], n: int, dtype: Any
    ) -> None:
        self.base, self.fn = base, fn
        self.shape = (int(base.shape[0]), n, n)
        self.dtype = np.dtype(dtype)

    def _rows(self, key: slice | np.ndarray) -> np.ndarray:
        rows = self.base[key] if isinstance(key, slice) else take(self.base, np.asarray(key))
        return self.fn(np.asarray(rows)).astype(self.dtype, copy=False)


def measure_centre(scan: ScanData, max_patterns: int = 256) -> tuple[float, float]:
    """The zero frequency's (y, x) detector pixel: the centroid of the mean pattern's bright part.

    The mean of up to ``max_patterns`` patterns spread over the scan, smoothed, above a tenth
    of its maximum (the direct beam and its near side lobes), bad pixels left out.
    """
    m = scan.n_patterns
    index = np.unique(np.linspace(0, m - 1, min(m, max_patterns)).round().astype(np.int64))
    mean = np.mean(scan.amplitudes(index).astype(np.float64) ** 2, axis=0)
    smooth = ndimage.gaussian_filter(mean, 1.0)
    weight = np.clip(smooth - 0.1 * smooth.max(), 0, None)
    if scan.bad_pixels is not None:
        weight[scan.bad_pixels] = 0
    cy, cx = ndimage.center_of_mass(weight)
    return float(cy), float(cx)


def fourier_crop(probe: np.ndarray, size: int) -> np.ndarray:
    """(P, D, D) -> (P, size, size): the probe on a grid ``D / size`` times coarser.

    Its far field cropped around the zero frequency (``D // 2`` after fftshift); the power in
    the kept band is kept.
    """
    d = probe.shape[-1]
    far = np.fft.fftshift(np.fft.fft2(probe, norm="ortho"), axes=(-2, -1))
    lo = d // 2 - size // 2
    far = far[..., lo : lo + size, lo : lo + size]
    return np.fft.ifft2(np.fft.ifftshift(far, axes=(-2, -1)), norm="ortho")


def fourier_resample(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W) -> about (H scale, W scale) for ``scale`` <= 1: the image's band cropped.

    Pixel ``j`` of the result sits at ``j / scale`` of the input (pixel 0 stays), as the
    positions scale; the mean is kept.
    """
    h, w = image.shape
    shape = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    far = np.fft.fftshift(np.fft.fft2(image))
    y0, x0 = h // 2 - shape[0] // 2, w // 2 - shape[1] // 2
    far = far[y0 : y0 + shape[0], x0 : x0 + shape[1]]
    out = np.fft.ifft2(np.fft.ifftshift(far)) * (shape[0] * shape[1]) / (h * w)
    return out.astype(np.complex64)


def centre_crop(probe: np.ndarray, size: int) -> np.ndarray:
    """(P, C, C) -> (P, size, size): the central window (pixel ``C // 2`` stays the centre)."""
    c = probe.shape[-1]
    lo = c // 2 - size // 2
    return probe[..., lo : lo + size, lo : lo + size]


def centre_ramp(probe: np.ndarray, offset_px: tuple[float, float]) -> np.ndarray:
    """The probe times ``exp(2 pi i (dy y + dx x) / N)``: its far field moved by (dy, dx) px."""
    n = probe.shape[-1]
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ramp = np.exp(2j * np.pi * (offset_px[0] * y + offset_px[1] * x) / n)
    return (probe * ramp).astype(np.complex64)


def upsample_probe(probe: np.ndarray, crop: int, detector: int) -> np.ndarray:
    """The inverse of :func:`prepare`'s probe resampling: an (P, N, N) probe on the detector's grid.

    Zero-padded in real space to ``crop`` (undoing binning's window), then its far field
    zero-padded to ``detector`` pixels (undoing the crop): :func:`prepare` gives it back.
    """
    p = np.asarray(probe, dtype=np.complex64)
    if p.ndim == 2:
        p = p[None]
    n = p.shape[-1]
    padded = np.zeros((*p.shape[:-2], crop, crop), dtype=np.complex64)
    lo = crop // 2 - n // 2
    padded[..., lo : lo + n, lo : lo + n] = p
    far = np.fft.fftshift(np.fft.fft2(padded, norm="ortho"), axes=(-2, -1))
    big = np.zeros((*p.shape[:-2], detector, detector), dtype=np.complex128)
    lo = detector // 2 - crop // 2
    big[..., lo : lo + crop, lo : lo + crop] = far
    return np.fft.ifft2(np.fft.ifftshift(big, axes=(-2, -1)), norm="ortho").astype(np.complex64)


@dataclasses.dataclass(frozen=True)
class DetectorPlan:
    """Where the pattern window sits on the detector and what it becomes."""

    detector: int
    crop: int
    bin: int
    start: tuple[int, int]
    centre: tuple[float, float]

    @property
    def n(self) -> int:
        return self.crop // self.bin

    def window(self, patterns: np.ndarray) -> np.ndarray:
        (y0, x0), c, b = self.start, self.crop, self.bin
        block = patterns[..., y0 : y0 + c, x0 : x0 + c]
        if b == 1:
            return block
        n = self.n
        return block.reshape(*block.shape[:-2], n, b, n, b).sum(axis=(-3, -1))


def plan_window(
    detector: int, crop: int | None, bin: int, centre: tuple[float, float]
) -> DetectorPlan:
    """The crop window around ``centre`` whose binned centre pixel holds the zero frequency."""
    c = detector if crop is None else crop
    if bin < 1 or c % bin:
        raise ConfigError(f"detector crop {c} is not a multiple of the bin {bin}")
    if c > detector:
        raise ConfigError(f"detector crop {c} is larger than the {detector}-pixel detector")
    n = c // bin
    # the whole detector, or a window whose centre bin holds the zero-frequency pixel (at its
    # middle for an odd bin, half a pixel before it for an even one: the ramp takes the rest)
    start = (
        (0, 0)
        if c == detector
        else tuple(int(round(v)) - (n // 2) * bin - (bin - 1) // 2 for v in centre)
    )
    if min(start) < 0 or max(start) + c > detector:
        raise ConfigError(
            f"a {c}-pixel window around the centre ({centre[0]:.1f}, {centre[1]:.1f}) leaves "
            f"the {detector}-pixel detector: crop less, or give --centre"
        )
    return DetectorPlan(detector, c, bin, (start[0], start[1]), centre)


def prepare(
    scan: ScanData,
    crop: int | None = None,
    bin: int = 1,
    centre: tuple[float, float] | None = None,
    correct_centre: bool = True,
) -> ScanData:
    """The scan with its patterns cropped/binned to N, the probe and positions to match.

    Parameters
    ----------
    crop : detector pixels kept around the zero frequency (default all)
    bin : pixels summed along each axis
    centre : (y, x) detector pixel of the zero frequency (default: measured, or the array
        centre when neither crop nor bin is asked for)
    correct_centre : give the probe the phase ramp that matches the patterns' measured
        zero-frequency offset (above :data:`CENTRE_TOLERANCE_PX`)
    """
    d = scan.N
    resample = (crop is not None and crop != d) or bin != 1
    if centre is None:
        centre = measure_centre(scan) if resample else (float(d // 2), float(d // 2))
        if resample:
            logger.info("zero frequency measured at detector pixel (%.2f, %.2f)", *centre)
    plan = plan_window(d, crop, bin, centre)
    out = scan
    if resample:
        out = _resampled(scan, plan)
    if not correct_centre:
        return out
    from ptychopinn.io.summary import diffraction_geometry

    offset = diffraction_geometry(out).offset_px
    if max(abs(v) for v in offset) <= CENTRE_TOLERANCE_PX:
        return out
    logger.info(
        "the patterns' zero frequency sits %+.2f, %+.2f px (y, x) from the probe's far field: "
        "the probe gets the matching phase ramp (the object gets none)",
        *offset,
    )
    meta = {**out.metadata, "centre_offset_corrected_px": [round(v, 3) for v in offset]}
    return dataclasses.replace(out, probe=centre_ramp(out.probe, offset), metadata=meta)


def _resampled(scan: ScanData, plan: DetectorPlan) -> ScanData:
    n, counts = plan.n, scan.units == "counts"

    def transform(patterns: np.ndarray) -> np.ndarray:
        if counts:
            return plan.window(patterns)
        # amplitudes: intensities are what add up in a binned pixel
        return np.sqrt(plan.window(patterns.astype(np.float64) ** 2))

    dtype = scan.diffraction.dtype if counts else np.float32
    if counts and np.dtype(dtype).kind in "iu" and plan.bin > 1:
        dtype = np.int64 if np.dtype(dtype).itemsize > 4 else np.int32
    probe = scan.probe
    if plan.crop != plan.detector:
        probe = fourier_crop(scan.probe, plan.crop)
        lost = 1 - float(np.sum(np.abs(probe) ** 2)) / float(np.sum(np.abs(scan.probe) ** 2))
        if lost > PROBE_LOSS_WARNING:
            logger.warning(
                "cropping the detector to %d px cuts %.1f%% of the probe's far field (the "
                "direct beam): the model cannot explain what is cut off; crop less or bin",
                plan.crop, 100 * lost,
            )  # fmt: skip
    if plan.bin > 1:
        total = float(np.sum(np.abs(probe) ** 2))
        probe = centre_crop(probe, n)
        lost = 1 - float(np.sum(np.abs(probe) ** 2)) / max(total, 1e-30)
        if lost > PROBE_LOSS_WARNING:
            logger.warning(
                "binning by %d leaves a %d-pixel window: %.1f%% of the probe's power falls "
                "outside it (bin less, or crop instead)",
                plan.bin, n, 100 * lost,
            )  # fmt: skip
    bad = None
    if scan.bad_pixels is not None:
        bad = plan.window(scan.bad_pixels.astype(np.int64)) > 0
    scale = plan.crop / plan.detector
    logger.info(
        "detector %d px -> window of %d px at (%d, %d), binned %d x %d -> %d x %d patterns; "
        "object pixels %.3g times larger",
        plan.detector, plan.crop, *plan.start, plan.bin, plan.bin, n, n, 1 / scale,
    )  # fmt: skip
    meta = {
        **scan.metadata,
        "detector": {
            "pixels": plan.detector,
            "crop": plan.crop,
            "bin": plan.bin,
            "window_start_px": list(plan.start),
            "centre_px": [round(v, 3) for v in plan.centre],
        },
    }
    return dataclasses.replace(
        scan,
        diffraction=LazyPatterns(scan.diffraction, transform, n, dtype),
        positions_px=scan.positions_px * scale,
        nominal_positions_px=None
        if scan.nominal_positions_px is None
        else scan.nominal_positions_px * scale,
        probe=np.asarray(probe, dtype=np.complex64),
        object=None if scan.object is None else fourier_resample(scan.object, scale),
        patches=None,
        bad_pixels=bad,
        background=None if scan.background is None else plan.window(scan.background),
        pixel_size_m=None if scan.pixel_size_m is None else scan.pixel_size_m / scale,
        metadata=meta,
    )
