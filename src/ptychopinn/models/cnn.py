"""The PtychoPINN CNN: one encoder, an amplitude and a phase decoder.

Every shape follows from :class:`~ptychopinn.config.ModelConfig`: the input has
``C = gridsize**2`` channels of N x N diffraction amplitudes, the encoder has
``log2(N) - 3`` conv-conv-pool blocks with filters ``(32, 64, 128, ...) x
n_filters_scale``, and each decoder upsamples back to the object support (N/2)
which is then zero-padded to N x N. With ``probe_big`` a thin full-frame path
fills the border outside the support.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ptychopinn.config import ModelConfig
from ptychopinn.models.base import ObjectNetwork


def conv_block(in_ch: int, out_ch: int, norm: str, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, optional normalisation (GroupNorm, BatchNorm or ChannelLayerNorm), GELU."""
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)]
    if norm == "group":
        layers.append(nn.GroupNorm(_groups(out_ch), out_ch))
    elif norm == "batch":
        layers.append(nn.BatchNorm2d(out_ch))
    elif norm == "layer":
        layers.append(ChannelLayerNorm(out_ch))
    layers.append(nn.GELU())
    return nn.Sequential(*layers)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel, with a per-channel scale and shift.

    Each sample and pixel is normalised on its own (ConvNeXt's LayerNorm for images), so the
    network computes the same in training and in evaluation, whatever else is in the batch.
    On a channels-last tensor the permutation is free and the normalisation is one pass over
    contiguous memory; GroupNorm, which also normalises per sample, has a slow CPU backward.

    Shapes
    ------
    input, output : (B, C, H, W)
    """

    def forward(self, x: Tensor) -> Tensor:
        # statistics in float32 under bf16 autocast (or bf16 weights) too: safer, and on a CPU
        # faster than torch's bfloat16 kernel for a few channels (16 channels: 0.8 against
        # 1.4 ms per forward and backward of 18 patterns at 32 x 32)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast(x.device.type, enabled=False):
            y = F.layer_norm(
                x.permute(0, 2, 3, 1).float(), self.normalized_shape, weight, bias, self.eps
            )
        return y.to(x.dtype).permute(0, 3, 1, 2)


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class _Decoder(nn.Module):
    """Upsampling path from encoded features to ``out_ch`` maps at the support size."""

    def __init__(self, filters: tuple[int, ...], n_up: int, out_ch: int, norm: str):
        super().__init__()
        blocks = []
        ch = filters[-1]
        ladder = list(reversed(filters[:-1])) or [filters[0]]
        for i in range(n_up):
            nxt = ladder[min(i, len(ladder) - 1)]
            blocks.append(nn.Sequential(conv_block(ch, nxt, norm), conv_block(nxt, nxt, norm)))
            ch = nxt
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(ch, out_ch, 3, padding=1)
        self.out_channels_features = ch

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        for block in self.blocks:
            x = block(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.head(x), x


class PtychoPINNNet(ObjectNetwork):
    """Diffraction amplitudes -> object amplitude and phase patches.

    Shapes
    ------
    input : (B, C, N, N) normalised diffraction amplitudes
    output : amplitude (B, C, N, N) >= 0 and phase (B, C, N, N) in (-pi, pi)
    """

    border: nn.Sequential | None
    border_mask: Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, n, filters = config.C, config.N, config.filters
        layers = []
        in_ch = c
        norm = config.norm_layer
        for i, f in enumerate(filters):
            stride = config.stem_stride if i == 0 else 1
            layers.append(
                nn.Sequential(
                    conv_block(in_ch, f, norm, stride), conv_block(f, f, norm), nn.MaxPool2d(2)
                )
            )
            in_ch = f
        self.encoder = nn.Sequential(*layers)
        encoded = n // (config.stem_stride * 2 ** len(filters))
        support = config.support_px
        n_up = int(round(math.log2(support / encoded)))
        if encoded * 2**n_up != support:
            raise ValueError(f"support {support} is not a power-of-two multiple of {encoded}")
        self.amplitude_decoder = _Decoder(filters, n_up, c, norm)
        self.phase_decoder = _Decoder(filters, n_up, c, norm)
        pad = (n - support) // 2
        self._pad = (pad, n - support - pad, pad, n - support - pad)
        if config.probe_big and support < n:
            feats = self.amplitude_decoder.out_channels_features
            self.border = nn.Sequential(
                nn.Upsample(size=(n, n), mode="nearest"), nn.Conv2d(2 * feats, 2 * c, 3, padding=1)
            )
            mask = torch.ones(n, n)
            mask[pad : pad + support, pad : pad + support] = 0
            self.register_buffer("border_mask", mask, persistent=False)
        else:
            self.border = None

    def _amplitude(self, x: Tensor) -> Tensor:
        return amplitude_activation(x, self.config.amp_activation)

    def forward(self, x: Tensor, probe: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.config.input_transform == "sqrt":
            x = x.clamp_min(0).sqrt()
        elif self.config.input_transform == "log1p":
            x = torch.log1p(x)
        features = self.encoder(x)
        amp_logits, amp_feats = self.amplitude_decoder(features)
        phase_logits, phase_feats = self.phase_decoder(features)
        amplitude = F.pad(self._amplitude(amp_logits), self._pad)  # (B, C, N, N)
        phase = F.pad(math.pi * torch.tanh(phase_logits), self._pad)  # (B, C, N, N)
        if self.border is not None:
            border = self.border(torch.cat([amp_feats, phase_feats], dim=1))  # (B, 2C, N, N)
            b_amp, b_phase = border.chunk(2, dim=1)
            amplitude = amplitude + self.border_mask * self._amplitude(b_amp)
            phase = phase + self.border_mask * math.pi * torch.tanh(b_phase)
        return amplitude, phase


def amplitude_activation(x: Tensor, kind: str) -> Tensor:
    """Positive amplitude from logits; every kind gives unit transmission at zero logits."""
    if kind == "softplus":
        return F.softplus(x + 0.5413)  # softplus(0.5413) = 1
    if kind == "sigmoid":
        return 2.0 * torch.sigmoid(x)
    if kind == "exp":
        return torch.exp(x.clamp(max=10.0))
    return F.relu(x + 1.0)


def object_patches(amplitude: Tensor, phase: Tensor) -> Tensor:
    """Complex64 patches ``A * exp(i phi)``, same shape as the inputs.

    The network's outputs are bfloat16 under bf16 autocast; the patches (and the physics
    after them) are float32 / complex64 either way.
    """
    return torch.polar(amplitude.float(), phase.float())


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
