"""Stitching on the object grid, and phase synchronisation of independent patches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptychopinn.models.base import ObjectNetwork
from ptychopinn.physics.functional import extract_patches, square_support
from ptychopinn.stitching import CanvasGeometry, stitch, synchronize_phases


def _object(rng: np.random.Generator, shape=(80, 80)) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    phase = gaussian_filter(rng.standard_normal(shape), 4) * 8
    return (0.8 * np.exp(1j * phase)).astype(np.complex64)


def _positions(rng, step=6.0, lo=20, hi=60):
    g = np.arange(lo, hi + 1e-9, step)
    pos = np.array([(y, x) for y in g for x in g], dtype=np.float64)
    return pos + rng.uniform(-0.5, 0.5, pos.shape)


def test_stitch_is_exact_on_patches_cut_from_an_object():
    rng = np.random.default_rng(0)
    obj = _object(rng)
    pos = _positions(rng)
    patches = extract_patches(torch.from_numpy(obj)[None], torch.from_numpy(pos)[None], 16)[0]
    canvas, weight, geo = stitch(patches, torch.from_numpy(pos), square_support(16, 8))
    r0, c0 = geo.origin_px
    h, w = geo.shape
    inner = (weight > 0.5 * weight.max()).numpy()
    ref = obj[r0 : r0 + h, c0 : c0 + w]
    assert (
        np.abs(canvas.numpy()[inner] - ref[inner]).max() < 0.05
    )  # sub-pixel: Fourier interpolation
    # integer positions: exact
    ipos = np.round(pos)
    patches = extract_patches(torch.from_numpy(obj)[None], torch.from_numpy(ipos)[None], 16)[0]
    canvas, weight, geo = stitch(patches, torch.from_numpy(ipos), torch.ones(16, 16))
    r0, c0 = geo.origin_px
    covered = (weight > 0).numpy()
    assert np.allclose(
        canvas.numpy()[covered],
        obj[r0 : r0 + geo.shape[0], c0 : c0 + geo.shape[1]][covered],
        atol=1e-5,
    )


def test_canvas_geometry_covers_every_patch():
    pos = np.array([[10.2, 50.7], [30.5, 12.1]])
    geo = CanvasGeometry.covering(pos, 16)
    for p in np.round(pos):
        top_left = p - 8 - np.asarray(geo.origin_px)
        assert np.all(top_left >= 0) and np.all(top_left + 16 <= np.asarray(geo.shape))


def test_synchronize_phases_removes_per_patch_phase_offsets():
    rng = np.random.default_rng(1)
    obj = _object(rng)
    pos = _positions(rng)
    patches = extract_patches(torch.from_numpy(obj)[None], torch.from_numpy(pos)[None], 16)[0]
    offsets = torch.from_numpy(rng.uniform(-np.pi, np.pi, len(pos)).astype(np.float32))
    scrambled = patches * torch.polar(torch.ones_like(offsets), offsets)[:, None, None]
    weights = square_support(16, 12)
    fixed = synchronize_phases(scrambled, pos, weights)
    ratio = (fixed * patches.conj()).sum(dim=(-2, -1))  # per-patch residual phase factor
    residual = torch.angle(ratio * ratio[0].conj())
    assert residual.abs().max() < 0.03  # limited by the Fourier interpolation of a steep phase
    canvas_bad, w, _ = stitch(scrambled, torch.from_numpy(pos), weights)
    canvas_good, _, geo = stitch(fixed, torch.from_numpy(pos), weights)
    r0, c0 = geo.origin_px
    ref = torch.from_numpy(obj[r0 : r0 + geo.shape[0], c0 : c0 + geo.shape[1]])
    inner = w > 0.5 * w.max()

    def align(c: torch.Tensor) -> torch.Tensor:
        return c * torch.polar(torch.tensor(1.0), torch.angle((ref.conj() * c)[inner].sum()).neg())

    err_good = (align(canvas_good) - ref)[inner].abs().mean()
    err_bad = (align(canvas_bad) - ref)[inner].abs().mean()
    assert err_good < 0.05 < err_bad


def _stitched_phase_error(fixed, pos, weights, obj) -> float:
    """RMS phase error (rad) of the stitched patches, global phase and phase plane removed."""
    canvas, weight, geo = stitch(fixed, torch.from_numpy(pos), weights)
    r0, c0 = geo.origin_px
    ref = obj[r0 : r0 + geo.shape[0], c0 : c0 + geo.shape[1]]
    inner = (weight > 0.5 * weight.max()).numpy()
    diff = np.angle(canvas.numpy()[inner] * ref[inner].conj())
    diff = np.angle(np.exp(1j * (diff - np.angle(np.exp(1j * diff).mean()))))
    rows, cols = np.nonzero(inner)
    plane = np.stack([np.ones_like(rows), rows, cols], axis=1).astype(np.float64)
    fit = np.linalg.lstsq(plane, diff, rcond=None)[0]
    return float(np.sqrt(np.mean((diff - plane @ fit) ** 2)))


@pytest.mark.parametrize("seed", [0, 2, 4])
def test_synchronisation_does_not_accumulate_per_patch_errors(seed: int) -> None:
    """Patches with a wrong local phase gradient each (as a network's are) and random
    offsets, on a 45 x 45 scan: the offsets that agree best with all overlapping patches at
    once leave a large-scale phase error of about the per-patch error (0.15 rad), where
    following neighbours (a spanning tree, then 20 rounds of aligning each patch to the
    others) left 0.25-0.70 rad on these scans."""
    rng = np.random.default_rng(seed)
    obj = _object(rng, shape=(200, 200))
    pos = _positions(rng, step=4.0, lo=12, hi=188)
    patches = extract_patches(torch.from_numpy(obj)[None], torch.from_numpy(pos)[None], 16)[0]
    k = len(pos)
    ar = torch.arange(16) - 7.5
    slope = torch.from_numpy(rng.normal(0.0, 0.05, (k, 2))).float()  # rad / px
    offset = torch.from_numpy(rng.uniform(-np.pi, np.pi, k)).float()
    error = (
        slope[:, 0, None, None] * ar[:, None] + slope[:, 1, None, None] * ar + offset[:, None, None]
    )
    weights = square_support(16, 12)
    fixed = synchronize_phases(patches * torch.polar(torch.ones_like(error), error), pos, weights)
    assert _stitched_phase_error(fixed, pos, weights, obj) < 0.2


class _PatchLookup(ObjectNetwork):
    """Test double for a trained network: returns the stored patch of the pattern it is given."""

    def __init__(self, amplitudes: torch.Tensor, patches: torch.Tensor):
        super().__init__()
        self.register_buffer("amplitudes", amplitudes.reshape(len(amplitudes), -1))
        self.register_buffer("patches", patches)

    def forward(self, x: torch.Tensor, probe: torch.Tensor | None = None):
        b, c, n, _ = x.shape
        match = torch.cdist(x.reshape(b * c, -1), self.amplitudes).argmin(dim=1)
        p = self.patches[match].reshape(b, c, n, n)
        return p.abs(), p.angle()


@pytest.mark.parametrize("error", ["gradients", "offsets"])
def test_auto_phases_keep_the_stitching_the_patterns_prefer(error: str) -> None:
    """A channel model trained on groups predicts phases its neighbours agree with;
    synchronising its patches then adds up their gradient errors, while arbitrary offsets need
    it. For such a model ``synchronize="auto"`` stitches both ways and keeps the one under
    which the measured patterns are more likely: here, always the one closer to the truth.
    A gridsize-1 network sees one pattern at a time, so ``"auto"`` synchronises it."""
    from ptychopinn import workflows as pp
    from ptychopinn.bundle import Bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.data.simulate import simulate_scan
    from ptychopinn.inference import reconstruct

    n = 32
    scan = simulate_scan(n=n, n_positions=400, object_kind="grf", seed=3)
    norm = Normalization.from_scan(scan)
    truth = torch.from_numpy(scan.patches).to(torch.complex64)  # (K, N, N)
    rng = np.random.default_rng(0)
    k = len(truth)
    ar = torch.arange(n) - (n - 1) / 2
    slope = torch.from_numpy(rng.normal(0.0, 0.04, (k, 2))).float()  # rad / px
    if error == "gradients":  # the absolute phase kept (to 0.05 rad), wrong local gradients
        offset = torch.from_numpy(rng.normal(0.0, 0.05, k)).float()
    else:  # each patch with an arbitrary phase, gradients nearly right
        offset = torch.from_numpy(rng.uniform(-np.pi, np.pi, k)).float()
        slope = slope / 10
    phase = slope[:, 0, None, None] * ar[:, None] + slope[:, 1, None, None] * ar
    patches = truth * torch.polar(torch.ones(k, n, n), phase + offset[:, None, None])
    amplitudes = torch.from_numpy(scan.amplitudes() * norm.amplitude_factor)
    config = Config(model=ModelConfig(N=n, gridsize=2))
    probe = torch.from_numpy(scan.probe * norm.amplitude_factor).to(torch.complex64)
    probe = probe.reshape(-1, n, n)  # (P, N, N)
    bundle = Bundle(config, norm, _PatchLookup(amplitudes, patches), probe, manifest={})

    ssim, chosen = {}, {}
    for mode in ("auto", "on", "off"):
        rec = reconstruct(bundle, scan, synchronize=mode)
        ssim[mode] = pp.evaluate_reconstruction(rec, scan.object).metrics.phase_ssim
        chosen[mode] = rec.metadata["phases"]
    better = "off" if error == "gradients" else "on"
    worse = "on" if better == "off" else "off"
    assert chosen["auto"] == chosen[better] == ("network" if better == "off" else "synchronised")
    assert ssim["auto"] == ssim[better] > ssim[worse] + 0.05, ssim
    # chunk by chunk (the patterns read again, 128 at a time, for the likelihood): same choice
    rec = reconstruct(bundle, scan, synchronize="auto", chunk_patterns=128)
    assert rec.metadata["phases"] == chosen["auto"] and rec.metadata["n_chunks"] > 1
    # the same patches from a network that sees one pattern at a time: synchronised, without
    # comparing
    bundle.config = Config(model=ModelConfig(N=n, gridsize=1))
    rec = reconstruct(bundle, scan, synchronize="auto")
    assert rec.metadata["phases"] == "synchronised" and rec.metadata["phase_nll"] is None
    np.testing.assert_array_equal(rec.object, reconstruct(bundle, scan, synchronize="on").object)


def test_probe_amplitude_weights_stitch_well_whichever_way_the_patch_errors_fall() -> None:
    """``"intensity"`` weights are best when a patch's errors grow where the probe is weak,
    ``"support"`` when they are even over the patch; the default ``"probe"`` (amplitude) sits
    between them and stays close to the best in both cases."""
    from ptychopinn.bundle import Bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.data.simulate import simulate_scan
    from ptychopinn.errors import ConfigError
    from ptychopinn.inference import stitch_weights

    n = 32
    scan = simulate_scan(n=n, n_positions=144, object_kind="grf", seed=1)
    probe = torch.from_numpy(scan.probe.reshape(-1, n, n)).to(torch.complex64)
    bundle = Bundle(
        Config(model=ModelConfig(N=n)), Normalization.from_scan(scan), None, probe, manifest={}
    )
    weights = {kind: stitch_weights(bundle, kind) for kind in ("support", "probe", "intensity")}
    support = weights["support"]
    assert set(torch.unique(support).tolist()) == {0.0, 1.0}
    torch.testing.assert_close(weights["probe"] ** 2, weights["intensity"])
    assert float(weights["probe"].max()) == pytest.approx(1.0)
    assert bool(torch.all(weights["probe"][support == 0] == 0))
    with pytest.raises(ConfigError, match="stitch weights"):
        stitch_weights(bundle, "flat")  # type: ignore[arg-type]

    truth = torch.from_numpy(scan.patches).to(torch.complex64)  # (K, N, N)
    pos = torch.from_numpy(scan.positions_px)
    rel = probe.abs().square().sum(0).sqrt()
    rel = rel / rel.max()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(truth.shape, dtype=torch.complex64, generator=gen)
    errors = {}
    for case, scale in (
        ("weak probe", 0.05 / rel.clamp(min=0.05)),
        ("even", torch.full_like(rel, 0.2)),
    ):
        patches = truth + noise * scale
        exact, _, _ = stitch(truth, pos, support)
        errors[case] = {}
        for kind, w in weights.items():
            stitched, coverage, _ = stitch(patches, pos, w)
            inside = coverage > 0
            errors[case][kind] = float((stitched - exact)[inside].abs().square().mean().sqrt())
    weak, even = errors["weak probe"], errors["even"]
    assert weak["intensity"] < weak["probe"] < weak["support"], errors
    assert even["support"] < even["probe"] < even["intensity"], errors
    assert weak["probe"] < 1.5 * weak["intensity"] and even["probe"] < 1.5 * even["support"], errors
