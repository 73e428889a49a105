"""The interface every network of the package implements."""

from __future__ import annotations

from torch import Tensor, nn


class ObjectNetwork(nn.Module):
    """Diffraction amplitudes -> object amplitude and phase patches.

    Shapes
    ------
    input : (B, C, N, N) normalised diffraction amplitudes; optional probe (P, N, N) complex
    output : amplitude (B, C, N, N) >= 0 and phase (B, C, N, N) in (-pi, pi)
    """

    def set_probe(self, probe: Tensor) -> None:
        """Give the network the forward model's (P, N, N) probe, for those that use it.

        The probe is not part of the weights; networks that do not use it ignore it.
        """

    def forward(self, x: Tensor, probe: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class PerPatternNetwork(ObjectNetwork):
    """A single-pattern network applied to every pattern of a group (shared weights).

    Shapes
    ------
    input : (B, C, N, N) normalised diffraction amplitudes, run as (B * C, 1, N, N)
    output : amplitude and phase (B, C, N, N); pattern c's patch depends on pattern c only
    """

    def __init__(self, single: ObjectNetwork):
        super().__init__()
        self.single = single

    def set_probe(self, probe: Tensor) -> None:
        self.single.set_probe(probe)

    def forward(self, x: Tensor, probe: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, n, m = x.shape
        amplitude, phase = self.single(x.reshape(b * c, 1, n, m), probe)
        return amplitude.reshape(b, c, n, m), phase.reshape(b, c, n, m)
