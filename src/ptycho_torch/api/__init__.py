"""The ``ptycho_torch.api`` surface Ptychodus 1.7.0 imports (see :mod:`.base_api`)."""

from ptycho_torch.api.base_api import (
    ConfigManager,
    DataloaderFormats,
    InferenceEngine,
    PtychoDataLoader,
    PtychoModel,
    Trainer,
)

__all__ = [
    "ConfigManager",
    "DataloaderFormats",
    "InferenceEngine",
    "PtychoDataLoader",
    "PtychoModel",
    "Trainer",
]
