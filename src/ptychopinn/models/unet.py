"""Physics-informed input + real-space U-Net (``ModelConfig.architecture = "backprop_unet"``).

The PtychoPINN encoder–decoder must learn the whole diffraction-to-object map through an
N/16 x N/16 bottleneck; on a CPU budget it under-fits natural objects even when trained on
ground truth. This network starts from the known physics instead: each measured amplitude
``X`` gets the phase of the probe's own far field and is propagated back to the sample,

    psi = ifft2c(X * exp(i angle(fft2c(P)))),    O0 = psi * conj(P) / (|P|^2 + eps),

a one-step error-reduction estimate of the object patch that is an invertible function of
``X`` inside the probe (no information is lost), already in object coordinates. A U-Net with
skip connections then maps ``O0`` (real and imaginary parts) to the object's amplitude and
phase on the support, so fine detail only needs a local correction rather than a decoding
from a global code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ptychopinn.config import ModelConfig
from ptychopinn.models.base import ObjectNetwork
from ptychopinn.models.cnn import amplitude_activation, conv_block
from ptychopinn.physics.functional import fft2c, ifft2c

#: Regularisation of the probe division, as a fraction of the probe's peak intensity.
PROBE_DIVISION_EPS = 0.05
#: Pixels of context the U-Net sees on each side of the region it predicts.
CONTEXT_PX = 0


def backpropagate(amplitude: Tensor, probe: Tensor) -> Tensor:
    """One error-reduction step from a flat start: measured amplitudes -> object estimate.

    Shapes
    ------
    amplitude : (B, C, N, N) normalised diffraction amplitudes
    probe : (P, N, N) complex, normalised (the first, strongest mode is used)
    returns (B, C, N, N) complex object estimate
    """
    p = probe[0]
    far = fft2c(p)
    psi = ifft2c(torch.polar(amplitude, torch.angle(far).expand_as(amplitude)))
    power = p.abs().square()
    floor = (PROBE_DIVISION_EPS * power.max()).clamp_min(torch.finfo(power.dtype).tiny)
    return psi * p.conj() / (power + floor)  # an all-zero probe gives zeros, not NaN


class BackpropUNet(ObjectNetwork):
    """Diffraction amplitudes -> back-propagated estimate -> U-Net -> amplitude and phase.

    The U-Net sees the estimate on the window of the object it predicts (the central support
    and :data:`CONTEXT_PX` on each side; the whole frame with ``probe_big``): outside the
    probe the estimate holds nothing, so the rest of the frame would only cost time (models
    saved before the window see the whole frame, ``unet_input = "frame"``). Four levels
    with filters ``(16, 32, 64, 128) x n_filters_scale`` (three poolings); with
    ``stem_stride = 2`` the U-Net runs at half resolution and its output is upsampled.

    Shapes
    ------
    input : (B, C, N, N) normalised diffraction amplitudes; probe (P, N, N) complex
    output : amplitude (B, C, N, N) >= 0 and phase (B, C, N, N) in (-pi, pi), zero outside
        the central support (the whole frame with ``probe_big``)
    """

    probe: Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, n = config.C, config.N
        norm = config.norm_layer
        filters = tuple(max(4, int(round(16 * 2**i * config.n_filters_scale))) for i in range(4))
        self.stem = nn.Sequential(
            conv_block(2 * c, filters[0], norm, config.stem_stride),
            conv_block(filters[0], filters[0], norm),
        )
        self.down = nn.ModuleList(
            nn.Sequential(
                conv_block(filters[i], filters[i + 1], norm),
                conv_block(filters[i + 1], filters[i + 1], norm),
            )
            for i in range(len(filters) - 1)
        )
        self.up = nn.ModuleList(
            nn.Sequential(
                conv_block(filters[i + 1] + filters[i], filters[i], norm),
                conv_block(filters[i], filters[i], norm),
            )
            for i in reversed(range(len(filters) - 1))
        )
        self.head = nn.Conv2d(filters[0], 2 * c, 3, padding=1)
        predicted = config.predicted_px
        frame = config.unet_input == "frame"
        self.window_px = n if frame else min(n, predicted + 2 * CONTEXT_PX)
        start = (n - self.window_px) // 2
        self._window = slice(start, start + self.window_px)
        margin = (self.window_px - predicted) // 2
        self._crop = slice(margin, margin + predicted)
        pad = (n - predicted) // 2
        self._pad = (pad, n - predicted - pad, pad, n - predicted - pad)
        self.register_buffer("probe", torch.zeros(1, n, n, dtype=torch.complex64), persistent=False)

    def set_probe(self, probe: Tensor) -> None:
        """The (P, N, N) normalised probe used by the back-propagation (not part of the weights)."""
        self.probe = probe.detach().to(self.probe.device, torch.complex64).clone()

    def forward(self, x: Tensor, probe: Tensor | None = None) -> tuple[Tensor, Tensor]:
        estimate = backpropagate(x, self.probe if probe is None else probe)  # (B, C, N, N)
        estimate = estimate[..., self._window, self._window]  # (B, C, W, W)
        h = torch.cat([estimate.real, estimate.imag], dim=1)  # (B, 2C, W, W)
        skips = [self.stem(h)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2, ceil_mode=True)))
        h = skips.pop()
        for block in self.up:
            skip = skips.pop()
            h = block(
                torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="nearest"), skip], dim=1)
            )
        out = self.head(h)  # (B, 2C, W / stride, W / stride)
        if out.shape[-1] != self.window_px:
            out = F.interpolate(
                out, size=(self.window_px,) * 2, mode="bilinear", align_corners=False
            )
        out = out[..., self._crop, self._crop]
        amp_logits, phase_logits = out.chunk(2, dim=1)  # (B, C, S, S) each
        amplitude = F.pad(amplitude_activation(amp_logits, self.config.amp_activation), self._pad)
        phase = F.pad(math.pi * torch.tanh(phase_logits), self._pad)
        return amplitude, phase
