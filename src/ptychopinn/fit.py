"""How well a reconstruction explains its patterns, against what their noise allows.

The amplitude R-factor ``sum |A_model - A_measured| / sum A_measured`` of a perfect model is
not 0 but set by the photon noise. Drawing Poisson counts from the model itself and scoring
them against it gives that floor for the same patterns, pixels and dose: a reconstruction
whose R-factor lies well above it leaves signal unexplained (a wrong probe, wrong positions,
an unmodelled background), whatever the dose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from ptychopinn.data.dataset import Normalization
from ptychopinn.inference import background_tensor, measured_on_canvas
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import object_amplitudes
from ptychopinn.reconstruction import Reconstruction
from ptychopinn.start import smooth_fill
from ptychopinn.stitching import CanvasGeometry

logger = logging.getLogger(__name__)

#: R-factor over its noise floor above which the fit is reported as poor.
POOR_FIT_RATIO = 2.0
#: ... and at or below which a correction has done its work (exact inputs: about 1.0).
GOOD_FIT_RATIO = 1.2


@dataclass(frozen=True)
class DataFit:
    """``r_factor`` of the reconstruction and ``noise_floor`` of a perfect model (same patterns)."""

    r_factor: float
    noise_floor: float
    patterns: int

    @property
    def ratio(self) -> float:
        return self.r_factor / max(self.noise_floor, 1e-12)

    @property
    def poor(self) -> bool:
        return self.ratio > POOR_FIT_RATIO


@torch.no_grad()
def data_fit(
    scan: ScanData,
    rec: Reconstruction,
    probe: torch.Tensor,
    normalization: Normalization,
    device: torch.device | str = "cpu",
    max_patterns: int = 1024,
    seed: int = 0,
) -> DataFit | None:
    """The R-factor of ``rec`` on up to ``max_patterns`` of the scan's patterns, and its floor.

    ``rec`` must hold one position per pattern of ``scan`` (in order); ``probe`` is the
    forward model's (normalised units; ``rec.probe`` when it was refined). None when the
    reconstruction does not cover the scan's patterns one by one.
    """
    if len(rec.positions_px) != scan.n_patterns:
        return None
    m = scan.n_patterns
    index = np.unique(np.linspace(0, m - 1, min(m, max_patterns)).round().astype(np.int64))
    geometry = CanvasGeometry(rec.origin_px, rec.object.shape)  # type: ignore[arg-type]
    measured, _ = measured_on_canvas(scan, index, normalization, geometry, device)
    pos = torch.from_numpy(rec.positions_px[index] - np.asarray(rec.origin_px, float)).to(device)
    # a network's canvas holds only its patches' supports: the probe's reach beyond them
    # gets the local average, as refinement starts from it
    filled = smooth_fill(rec.object, rec.coverage > 0, scan.N / 16)
    obj = torch.from_numpy(filled).to(device)
    background = background_tensor(scan, normalization, device)
    good = scan.good_pixels
    mask = torch.ones(scan.N, scan.N, device=device) if good is None else torch.from_numpy(good)
    mask = mask.to(device)
    scale = normalization.intensity_scale
    generator = torch.Generator(device="cpu").manual_seed(seed)
    misfit = signal = floor_misfit = floor_signal = 0.0
    for chunk in torch.arange(len(index)).split(256):
        model = object_amplitudes(obj, pos[chunk], probe.to(device), scan.N, background)
        data = measured[chunk]
        misfit += float(((model - data).abs() * mask).sum())
        signal += float((data * mask).sum())
        counts = torch.poisson((scale * model).square().cpu(), generator=generator)
        drawn = counts.to(device).sqrt() / scale
        floor_misfit += float(((model - drawn).abs() * mask).sum())
        floor_signal += float((drawn * mask).sum())
    return DataFit(misfit / max(signal, 1e-30), floor_misfit / max(floor_signal, 1e-30), len(index))


def report(fit: DataFit | None, used: set[str]) -> None:
    """Log the fit; a poor one with the flags that address it (those not already used)."""
    if fit is None:
        return
    logger.info(
        "data fit: amplitude R-factor %.4f (%.4f from photon noise alone, %d patterns)",
        fit.r_factor, fit.noise_floor, fit.patterns,
    )  # fmt: skip
    if not fit.poor:
        return
    remedies = [f for f in ("--refine_probe", "--refine_positions") if f not in used]
    logger.warning(
        "the reconstruction explains the patterns %.1f times worse than their noise allows "
        "(R-factor %.3f against %.3f): the probe, the positions or a detector background may "
        "be off%s",
        fit.ratio, fit.r_factor, fit.noise_floor,
        f"; try {' or '.join(remedies)}" if remedies else "",
    )  # fmt: skip
