"""Networks: diffraction amplitudes (B, C, N, N) -> object amplitude and phase (B, C, N, N).

:func:`build_network` picks the architecture named by ``ModelConfig.architecture``; every
network has ``forward(x, probe=None) -> (amplitude, phase)`` and ``set_probe(probe)``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ptychopinn.config import ModelConfig
from ptychopinn.models.base import ObjectNetwork

#: Prefix of the weights of networks saved when a single-pattern network trained on groups
#: was wrapped in a per-pattern module (configs with ``per_pattern``; now gridsize 1).
_PER_PATTERN_PREFIX = "single."


def build_network(config: ModelConfig) -> ObjectNetwork:
    """The network of ``config`` (seeded by the caller's torch RNG state)."""
    if config.architecture == "backprop_unet":
        from ptychopinn.models.unet import BackpropUNet

        return BackpropUNet(config)
    from ptychopinn.models.cnn import PtychoPINNNet

    return PtychoPINNNet(config)


def prediction_support(config: ModelConfig, device: torch.device | None = None) -> Tensor:
    """(N, N) 0/1 mask of the pixels the network predicts: the central support, or the whole
    frame with ``probe_big``. Outside it the patches are zero and weigh nothing."""
    from ptychopinn.physics.functional import square_support

    return square_support(config.N, config.predicted_px, device=device)


def migrate_state_dict(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Weights saved by earlier versions, under the names of today's modules.

    ``prefix`` is where the network sits in the state dict (``"net."`` in a training
    checkpoint, ``""`` in a bundle).
    """
    old = prefix + _PER_PATTERN_PREFIX
    return {
        (prefix + key[len(old) :] if key.startswith(old) else key): value
        for key, value in state.items()
    }
