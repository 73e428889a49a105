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
