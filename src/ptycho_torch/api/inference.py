"""Inference: :class:`InferenceEngine` reconstructs a data loader's scans with a loaded model.

The object comes back on the pixel grid of Ptychodus's object; when its shape is not known, the
object is taken to be centred on the scan (:func:`scan_centred_object_shape`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ptycho_torch.api.configs import ConfigManager
from ptychopinn.errors import BundleError, DataError
from ptychopinn.io.ptychodus_files import center_offset_px

if TYPE_CHECKING:
    from ptycho_torch.api.data import PtychoDataLoader
    from ptycho_torch.api.models import PtychoModel

__all__ = ["InferenceEngine", "scan_centred_object_shape"]


class InferenceEngine:
    """Reconstructs the scans of a :class:`PtychoDataLoader` with a loaded model."""

    def __init__(
        self, config_manager: ConfigManager | None = None, ptycho_model: PtychoModel | None = None
    ):
        if ptycho_model is None:
            raise BundleError("InferenceEngine: ptycho_model is required")
        self.ptycho_model = ptycho_model
        self.config_manager = config_manager or ConfigManager.from_loaded_model(ptycho_model)

    def _device(self) -> Any:
        """A GPU when there is one (inference needs no multi-device set-up), else the CPU."""
        from ptychopinn.device import torch_device

        return torch_device("auto")

    def reconstruct(self, data_loader: PtychoDataLoader, refine: int | str = "auto") -> Any:
        """The :class:`ptychopinn.reconstruction.Reconstruction` (canvas with its origin).

        As ``ptychopinn infer`` does by default: the network's reconstruction, refined until
        held-out patterns stop becoming more likely (``refine=0``: the network alone).
        """
        from ptychopinn.workflows import reconstruct

        if data_loader.scan is None:
            raise DataError("InferenceEngine: the data loader holds no scan")
        bundle = self.ptycho_model.require_module().to_bundle()
        inference = self.config_manager.inference_config
        return reconstruct(
            bundle,
            data_loader.scan,
            refine=refine,
            batch_size=int(inference.batch_size),
            device=self._device(),
            weights=inference.core_weights,
        )

    def predict_and_stitch(self, data_loader: PtychoDataLoader) -> np.ndarray:
        """The complex object (Ho, Wo) on the pixel grid of the input object.

        Ptychodus does not pass the object's shape; unless the loader knows it, the object is
        taken to be centred on the scan (as Ptychodus builds it), which fixes
        ``Ho = y_min + y_max + 1`` in Ptychodus pixels (same for Wo).
        """
        rec = self.reconstruct(data_loader)
        shape = data_loader.object_shape or scan_centred_object_shape(
            data_loader.scan.positions_px,  # type: ignore[union-attr]
            data_loader.scan.N,  # type: ignore[union-attr]
        )
        return rec.on_object_grid(shape)


def scan_centred_object_shape(positions_px: np.ndarray, n: int) -> tuple[int, int]:
    """(Ho, Wo) of an object centred on the scan's bounding box.

    Ptychodus centres pixel (Ho - 1) / 2 on the scan: with positions y in its convention,
    ``(Ho - 1) / 2 = (y_min + y_max) / 2``.

    >>> scan_centred_object_shape(np.array([[10.5, 20.5], [30.5, 40.5]]), 32)
    (41, 61)
    """
    pos = np.asarray(positions_px, dtype=np.float64) - center_offset_px(n)
    size = np.rint(pos.min(axis=0) + pos.max(axis=0) + 1).astype(int)
    return int(max(size[0], 1)), int(max(size[1], 1))
