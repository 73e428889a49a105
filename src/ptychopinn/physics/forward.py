"""The forward model as a small module whose physical constants are buffers."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ptychopinn.config import MergeWeights
from ptychopinn.physics.functional import (
    disk_mask,
    extract_patches,
    far_field_amplitude,
    merge_patches,
    patch_weights,
)


class ForwardModel(nn.Module):
    """Object patches of a group -> predicted diffraction amplitudes.

    At gridsize 1 each patch is illuminated and propagated. At gridsize > 1 the C
    patches of a group are first merged on a shared canvas (an overlap-normalised
    weighted average) and re-extracted at their offsets, so each predicted pattern
    sees its neighbours' estimate of the shared object.

    Parameters
    ----------
    probe : (P, N, N) complex probe in normalised units (see :func:`normalize_probe`)
    support : (N, N) 0/1 object support
    probe_mask : multiply the probe by a centred disk of diameter N/2
    merge_weights : weight of a patch's pixels in the merge (:func:`patch_weights`):
        ``"probe"``, the support times the probe amplitude, so each pixel of the shared
        object comes mostly from the patterns that illuminate it strongly and determine it
        best; ``"support"``, every pixel of the support alike
    trainable : the probe is a parameter (learned through the likelihood), not a constant
    """

    probe: Tensor
    support: Tensor

    def __init__(
        self,
        probe: Tensor,
        support: Tensor,
        probe_mask: bool = False,
        merge_weights: MergeWeights = "support",
        trainable: bool = False,
    ):
        super().__init__()
        n = probe.shape[-1]
        probe = probe.to(torch.complex64)
        if probe_mask:
            probe = probe * disk_mask(n, n / 2, device=probe.device)
        if trainable:  # the same state-dict key either way: checkpoints load into both
            self.probe = nn.Parameter(probe.clone())
        else:
            self.register_buffer("probe", probe)
        self.register_buffer("support", support.to(torch.float32), persistent=False)
        self.merge_weights = merge_weights

    def merge_group(self, patches: Tensor, offsets_px: Tensor) -> Tensor:
        """Merge then re-extract the patches of each group.

        Shapes
        ------
        patches : (B, C, N, N) complex
        offsets_px : (B, C, 2) float, (y, x) relative to the group centre
        returns (B, C, N, N) complex
        """
        n = patches.shape[-1]
        reach = int(math.ceil(float(offsets_px.abs().max()))) + 1
        size = n + 2 * reach
        on_canvas = offsets_px + size // 2
        # from the probe buffer at every call: a module restored from a checkpoint gets its
        # probe only when the state dict is loaded
        weights = patch_weights(self.support, self.probe.detach(), self.merge_weights)  # (N, N)
        canvas, _ = merge_patches(patches, on_canvas, (size, size), weights=weights)
        return extract_patches(canvas, on_canvas, n)

    def forward(self, patches: Tensor, offsets_px: Tensor | None = None) -> Tensor:
        """Predicted amplitudes (B, C, N, N) from object patches (B, C, N, N)."""
        if patches.shape[1] > 1:
            if offsets_px is None:
                raise ValueError("offsets_px is required when groups hold more than one patch")
            patches = self.merge_group(patches, offsets_px)
        return far_field_amplitude(self.probe, patches)
