"""Normalisation of diffraction data and the dataset of pattern groups."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ptychopinn.data.grouping import Groups
from ptychopinn.errors import DataError
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import extract_patches, intensity_scale

#: Patterns held in memory as normalised float32 below this many bytes; larger scans stream.
IN_MEMORY_LIMIT_BYTES = 2 * 1024**3
#: Patterns converted at a time while filling the in-memory cache.
_CACHE_CHUNK = 4096


#: Counts per unit of probe power that differ from the training data's by more than this
#: factor are taken as another dose (see :meth:`Normalization.for_scan`).
DOSE_TOLERANCE = 4.0


@dataclass(frozen=True)
class Normalization:
    """Fixed statistics that map a scan's amplitudes into the network's units.

    ``amplitude_factor`` multiplies raw amplitudes sqrt(counts) so that the
    training data have mean sum(X**2) = (N/2)**2. ``nphotons`` (default: the
    measured mean counts per pattern) fixes the Poisson scale
    ``s = sqrt(nphotons) / (N/2)``. ``probe_power`` is sum |probe|**2 of the raw
    training probe, used to carry the factor over to scans with another probe.
    """

    N: int
    amplitude_factor: float
    nphotons: float
    probe_power: float

    def __post_init__(self) -> None:
        if isinstance(self.N, bool) or not isinstance(self.N, int) or self.N < 1:
            raise DataError(f"normalization N: expected a positive integer, got {self.N!r}")
        for name in ("amplitude_factor", "nphotons", "probe_power"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DataError(f"normalization {name}: expected a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise DataError(
                    f"normalization {name}: expected a finite number > 0, got {value!r}"
                )

    @property
    def intensity_scale(self) -> float:
        return intensity_scale(self.nphotons, self.N)

    @classmethod
    def from_scan(cls, scan: ScanData, nphotons: float | None = None) -> Normalization:
        mean_total = scan.mean_total_intensity()
        if not mean_total > 0:
            raise DataError(f"{scan.source}: diffraction: all patterns are zero")
        n = scan.N
        power = float(np.sum(np.abs(scan.probe) ** 2))
        if not power > 0:
            raise DataError(f"{scan.source}: probeGuess is all zero")
        return cls(
            N=n,
            amplitude_factor=(n / 2) / math.sqrt(mean_total),
            nphotons=float(nphotons) if nphotons is not None else mean_total,
            probe_power=power,
        )

    def for_scan(self, scan: ScanData) -> Normalization:
        """The same statistics carried over to another scan, rescaled by its probe power,
        and by its dose when that is another exposure.

        Counts per unit of probe power within a factor :data:`DOSE_TOLERANCE` of the
        training data's are the same exposure, and the difference is the sample's
        transmission (kept). Further off, the scan was taken with another dose (exposure time,
        flux, attenuators): its amplitudes are brought to the training level and the Poisson
        scale follows the scan's counts, so a model trained at one dose serves another.
        """
        power = float(np.sum(np.abs(scan.probe) ** 2))
        if not power > 0:
            raise DataError(f"{scan.source}: probeGuess is all zero")
        factor = self.amplitude_factor * math.sqrt(self.probe_power / power)
        ratio = self.dose_ratio(scan, power)
        if ratio > 0 and not 1 / DOSE_TOLERANCE <= ratio <= DOSE_TOLERANCE:
            return Normalization(self.N, factor / math.sqrt(ratio), self.nphotons * ratio, power)
        return Normalization(self.N, factor, self.nphotons, power)

    def dose_ratio(self, scan: ScanData, power: float | None = None) -> float:
        """The scan's mean counts per unit of probe power over the training data's (from 256
        patterns spread over the scan); 0 for a scan of zeros."""
        if power is None:
            power = float(np.sum(np.abs(scan.probe) ** 2))
        trained = ((self.N / 2) / self.amplitude_factor) ** 2 / self.probe_power
        return scan.mean_total_intensity(256) / power / trained if power > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        return cls(**{k: data[k] for k in ("N", "amplitude_factor", "nphotons", "probe_power")})


class GroupDataset(Dataset):
    """Groups of normalised diffraction amplitudes with their local offsets.

    Items are dicts:

    * ``amplitude`` (C, N, N) float32, normalised
    * ``offsets`` (C, 2) float32, (y, x) relative to the group centre
    * ``index`` (C,) int64, pattern indices
    * ``patches`` (C, N, N) complex64, ground-truth object patches (``with_labels`` only)

    ``cache``: hold every normalised amplitude in memory (float32); ``None``: when they take
    at most :data:`IN_MEMORY_LIMIT_BYTES`. Otherwise each item reads its patterns from the
    scan, which may stream from disk (HDF5, memory-mapped NPZ).
    """

    def __init__(
        self,
        scan: ScanData,
        groups: Groups,
        normalization: Normalization,
        with_labels: bool = False,
        cache: bool | None = None,
    ):
        self.scan = scan
        self.groups = groups
        self.factor = np.float32(normalization.amplitude_factor)
        self.with_labels = with_labels
        n = scan.N
        if cache is None:
            cache = scan.n_patterns * n * n * 4 <= IN_MEMORY_LIMIT_BYTES
        if cache:
            amplitude = np.empty((scan.n_patterns, n, n), dtype=np.float32)
            for start in range(0, scan.n_patterns, _CACHE_CHUNK):  # no full-size temporaries
                block = slice(start, start + _CACHE_CHUNK)
                amplitude[block] = scan.amplitudes(block) * self.factor
            self._amplitude: torch.Tensor | None = torch.from_numpy(amplitude)
        else:
            self._amplitude = None
        self._labels: torch.Tensor | None = None
        if with_labels:
            self._labels = torch.from_numpy(_labels(scan))

    def __len__(self) -> int:
        return len(self.groups)

    def group_amplitudes(self, rows: slice | int | np.ndarray) -> torch.Tensor:
        """Normalised amplitudes of groups ``rows`` (slice, int or index array).

        Shapes
        ------
        returns (B, C, N, N), or (C, N, N) for an int
        """
        idx = self.groups.indices[rows]
        if self._amplitude is not None:
            return self._amplitude[torch.from_numpy(idx)]
        flat = self.scan.amplitudes(idx.reshape(-1))  # a fresh array (fancy indexing)
        flat *= self.factor
        return torch.from_numpy(flat.reshape(idx.shape + flat.shape[-2:]))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        idx = self.groups.indices[i]
        amplitude = self.group_amplitudes(i)
        item = {
            "amplitude": amplitude,
            "offsets": torch.from_numpy(self.groups.offsets_px[i].astype(np.float32)),
            "index": torch.from_numpy(idx),
        }
        if self._labels is not None:
            item["patches"] = self._labels[torch.from_numpy(idx)]
        return item


def _labels(scan: ScanData) -> np.ndarray:
    """Ground-truth object patches (M, N, N): ``Y`` if present, else cut from the object."""
    if scan.patches is not None:
        return scan.patches
    if scan.object is None:
        raise DataError(
            f"{scan.source}: supervised training needs 'Y' or 'objectGuess'; neither is present"
        )
    obj = torch.from_numpy(scan.object)[None]
    pos = torch.from_numpy(scan.positions_px)[None]
    return extract_patches(obj, pos, scan.N)[0].numpy()
