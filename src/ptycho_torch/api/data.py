"""Data: :class:`PtychoDataLoader`, the scans to train on or reconstruct.

Training data are the files Ptychodus exports (:func:`read_training_file`); reconstruction data
are the arrays it passes (:meth:`PtychoDataLoader.from_np`). Both arrive in Ptychodus's
conventions: diffraction are counts of any dtype (negative inpainted values are clipped,
:func:`_clip_counts`), positions (M, 2) (y, x) in object pixels with the probe centred on its
pixel (H - 1) / 2; they are converted with :func:`ptychopinn.io.ptychodus_files.center_offset_px`.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.api.configs import ConfigManager
from ptychopinn.errors import DataError
from ptychopinn.io.ptychodus_files import center_offset_px
from ptychopinn.io.scan import ScanData

logger = logging.getLogger(__name__)

__all__ = ["DataloaderFormats", "PtychoDataLoader", "read_training_file"]


class DataloaderFormats(enum.Enum):
    """How training data are served; both build ptychopinn's Lightning data module."""

    LIGHTNING_ONLY_MODULE = "lightning_only_module"
    LIGHTNING_MODULE = "lightning_module"


def _new_run_dir(output_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = output_dir / f"run_{stamp}"
    k = 1
    while run_dir.exists():
        run_dir = output_dir / f"run_{stamp}_{k}"
        k += 1
    return run_dir


def _clip_counts(diff: np.ndarray, source: str) -> np.ndarray:
    """Counts may dip below zero after Ptychodus's bad-pixel inpainting: clip them at 0."""
    if diff.dtype.kind == "f":
        negative = int(np.count_nonzero(diff < 0))
        if negative:
            logger.info("%s: clipping %d negative (inpainted) values to 0", source, negative)
            diff = np.clip(diff, 0, None)
    return diff


def read_training_file(path: Path) -> ScanData:
    """A training NPZ exported by Ptychodus (Ptychodus's position convention) or a product pair."""
    from ptychopinn.io.npz import load_npz_arrays, scan_from_arrays
    from ptychopinn.io.ptychodus_files import read_scan

    if path.suffix in (".h5", ".hdf5"):
        return read_scan(path)
    arrays = load_npz_arrays(path)
    key = "diffraction" if "diffraction" in arrays else "diff3d"
    if key in arrays:
        diff = np.asarray(arrays[key])
        arrays[key] = _clip_counts(diff, str(path))
        if "xcoords" in arrays and diff.ndim == 3:
            n = int(diff.shape[-1])
            for name in ("xcoords", "ycoords", "xcoords_start", "ycoords_start"):
                if name in arrays:
                    arrays[name] = np.asarray(arrays[name], dtype=np.float64) + center_offset_px(n)
    return scan_from_arrays(arrays, str(path), "counts")


@dataclass
class PtychoDataLoader:
    """Scans to train on or reconstruct, in ptychopinn's :class:`ScanData`.

    ``data_dir`` is a training directory or file: ``train_data.npz`` (+ ``test_data.npz`` for
    validation), else its single ``*.npz`` (Ptychodus's "Export Training Data"), else its
    ``product.h5`` + ``diffraction.h5``. Training writes into ``output_dir/run_<time>``
    (``self.output_dir``).
    """

    data_dir: Any = None
    config_manager: ConfigManager | None = None
    data_format: Any = DataloaderFormats.LIGHTNING_ONLY_MODULE
    output_dir: Any = None
    scan: ScanData | None = field(default=None, repr=False)
    val_scan: ScanData | None = field(default=None, repr=False)
    object_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data_format, str):
            self.data_format = DataloaderFormats(self.data_format)
        if self.scan is None and self.data_dir is not None:
            self.scan, self.val_scan = self._read(Path(self.data_dir))
        if self.output_dir is not None:
            self.output_dir = _new_run_dir(Path(self.output_dir))
        if self.object_shape is None and self.scan is not None:
            shape = self.scan.metadata.get("ptychodus", {}).get("object_shape")
            if self.scan.object is not None:
                self.object_shape = tuple(self.scan.object.shape)  # type: ignore[assignment]
            elif shape:
                self.object_shape = (int(shape[0]), int(shape[1]))

    @staticmethod
    def _read(path: Path) -> tuple[ScanData, ScanData | None]:
        if not path.exists():
            raise DataError(f"{path}: training data not found")
        if path.is_file():
            return read_training_file(path), None
        train, test = path / "train_data.npz", path / "test_data.npz"
        if train.is_file():
            logger.info("training on %s", train)
            return read_training_file(train), read_training_file(test) if test.is_file() else None
        npz = sorted(path.glob("*.npz"))
        if len(npz) == 1:
            logger.info("training on %s", npz[0])
            return read_training_file(npz[0]), None
        if len(npz) > 1:
            raise DataError(
                f"{path}: holds several NPZ files ({', '.join(p.name for p in npz)}); keep one, or "
                "name them train_data.npz and test_data.npz"
            )
        if (path / "product.h5").is_file() and (path / "diffraction.h5").is_file():
            logger.info("training on %s/product.h5 + diffraction.h5", path)
            return read_training_file(path / "product.h5"), None
        raise DataError(
            f"{path}: no training data (expected an exported *.npz or product.h5 + diffraction.h5)"
        )

    @classmethod
    def from_np(
        cls,
        diff_patterns: Any,
        probe: Any,
        positions: Any,
        config_manager: ConfigManager | None = None,
        object_shape: tuple[int, int] | None = None,
    ) -> PtychoDataLoader:
        """Arrays as Ptychodus passes them.

        Parameters
        ----------
        diff_patterns : (M, H, H) counts, any real dtype
        probe : (P, H, H) or (H, H) complex mode stack
        positions : (M, 2) (y, x) object pixels, Ptychodus's convention (probe centre at its
            pixel (H - 1) / 2)
        object_shape : (Ho, Wo) of the object the positions refer to; by default the object is
            taken to be centred on the scan, as Ptychodus makes it
        """
        diff = _clip_counts(np.asarray(diff_patterns), "diff_patterns")
        pos = np.asarray(positions, dtype=np.float64)
        if diff.ndim != 3 or pos.shape != (diff.shape[0], 2):
            raise DataError(
                f"from_np: expected diff_patterns (M, H, W) and positions (M, 2), got "
                f"{diff.shape} and {pos.shape}"
            )
        scan = ScanData(
            diffraction=diff,
            units="counts",
            positions_px=pos + center_offset_px(int(diff.shape[-1])),
            probe=np.asarray(probe),
            source="ptychodus",
        )
        return cls(config_manager=config_manager, scan=scan, object_shape=object_shape)
