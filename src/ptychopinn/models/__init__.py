"""Networks: diffraction amplitudes (B, C, N, N) -> object amplitude and phase (B, C, N, N).

:func:`build_network` picks the architecture named by ``ModelConfig.architecture``; every
network has ``forward(x, probe=None) -> (amplitude, phase)`` and ``set_probe(probe)``.
"""

from __future__ import annotations

import dataclasses

from ptychopinn.config import ModelConfig
from ptychopinn.models.base import ObjectNetwork, PerPatternNetwork


def build_network(config: ModelConfig) -> ObjectNetwork:
    """The network of ``config`` (seeded by the caller's torch RNG state)."""
    if config.per_pattern and config.C > 1:
        return PerPatternNetwork(build_network(dataclasses.replace(config, gridsize=1)))
    if config.architecture == "backprop_unet":
        from ptychopinn.models.unet import BackpropUNet

        return BackpropUNet(config)
    from ptychopinn.models.cnn import PtychoPINNNet

    return PtychoPINNNet(config)
