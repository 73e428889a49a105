"""Diagnostics of a network's output: detecting a collapsed model."""

from __future__ import annotations

from torch import Tensor

#: Output variation (see :func:`output_variation`) below which a model counts as collapsed.
COLLAPSE_THRESHOLD = 1e-4
#: Optimiser steps before training reports a collapse: a freshly initialised network (the
#: U-Net's in particular) predicts nearly the same patch for every pattern until it has
#: learned something, which is not a collapse.
COLLAPSE_MIN_STEPS = 50


def output_variation(patches: Tensor, support: Tensor) -> Tensor:
    """Relative variance of predicted object patches across a batch.

    ``mean_pixels var_batch(O) / mean_pixels mean_batch |O|**2`` on the support;
    about 0 when the model predicts the same patch for every pattern (collapse).

    Shapes
    ------
    patches : (B, C, N, N) complex; support : (N, N)
    """
    flat = patches.reshape(-1, *patches.shape[-2:])  # (B*C, N, N)
    var = (flat - flat.mean(dim=0, keepdim=True)).abs().square().mean(dim=0)
    power = flat.abs().square().mean(dim=0)
    w = support.sum().clamp_min(1.0)
    return (var * support).sum() / w / ((power * support).sum() / w).clamp_min(1e-12)
