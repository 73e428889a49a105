"""Scan-position correction: wrong positions are found again, right ones stay, through the CLI too."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptychopinn.data.dataset import Normalization
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.evaluation import evaluate, scanned_region
from ptychopinn.physics.functional import normalize_probe
from ptychopinn.positions import PositionCorrector, rms_error
from ptychopinn.refinement import RefineOptions, refine


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(
        n=32, n_positions=100, object_kind="image", photons_per_pattern=1e6, seed=3
    )


def _phase_ssim(rec, scan) -> float:
    box = scanned_region(scan.positions_px, scan.N, scan.object.shape)
    return evaluate(rec.on_object_grid(scan.object.shape), scan.object, crop_box=box).phase_ssim


def _error(rec, truth: np.ndarray) -> float:
    return rms_error(torch.from_numpy(rec.positions_px), torch.from_numpy(truth))


def _refine(scan, positions: np.ndarray, **options):
    wrong = dataclasses.replace(scan, positions_px=positions)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    opts = RefineOptions(n_iter=100, batch_size=16, **options)
    return refine(wrong, probe, Normalization.from_scan(wrong), None, opts)[0]


def test_random_position_errors_are_corrected(scan):
    """1 px (per axis) random errors: without correction refinement from a flat object gives
    a smeared object (0.17 phase SSIM measured); with it the errors shrink to under half
    (1.35 -> 0.58 px RMS measured) and the object is recovered (0.93)."""
    truth = scan.positions_px
    wrong = truth + np.random.default_rng(0).normal(0, 1.0, truth.shape)
    before = rms_error(torch.from_numpy(wrong), torch.from_numpy(truth))
    fixed = _refine(scan, wrong)
    corrected = _refine(scan, wrong, position_lr=0.1)
    assert _error(fixed, truth) == pytest.approx(before)  # uncorrected: the input positions
    assert _error(corrected, truth) < 0.6 * before
    assert _phase_ssim(corrected, scan) > _phase_ssim(fixed, scan) + 0.4
    assert _phase_ssim(corrected, scan) > 0.85
    record = corrected.refinement
    assert record.positions_refined and record.position_correction_rms_px > 0.5


def test_exact_positions_stay_where_they_are(scan):
    """No regression on exact positions: the corrections stay small and the object as good."""
    plain = _refine(scan, scan.positions_px)
    corrected = _refine(scan, scan.positions_px, position_lr=0.1)
    assert _error(corrected, scan.positions_px) < 0.25
    assert _phase_ssim(corrected, scan) > _phase_ssim(plain, scan) - 0.02


def test_affine_constraint_finds_a_stage_scale_and_rotation_error(scan):
    """The stage reports positions 3 % too large and rotated by 1 degree: the affine model
    finds the map (every position follows it), where the uncorrected refinement smears."""
    truth = scan.positions_px
    centre = truth.mean(axis=0)
    a = np.deg2rad(1.0)
    rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    reported = centre + 1.03 * (truth - centre) @ rotation.T
    before = rms_error(torch.from_numpy(reported), torch.from_numpy(truth))
    corrected = _refine(scan, reported, position_lr=0.1, position_constraint="affine")
    assert _error(corrected, truth) < 0.3 * before


def test_corrections_are_capped_and_carry_no_common_shift():
    """A correction never exceeds the cap; the mean correction is removed after each pass."""
    nominal = torch.zeros(4, 2, dtype=torch.float64)
    corrector = PositionCorrector(nominal, lr=10.0, max_px=1.5)
    corrector.positions.grad = torch.tensor([[-1.0, 0], [0, 0], [0, 0], [0, 0]]).double()
    corrector.step(torch.arange(4), 1.0)
    assert float(corrector.correction().abs().max()) == pytest.approx(1.5)
    corrector.constrain()
    assert torch.allclose(corrector.correction().mean(dim=0), torch.zeros(2, dtype=torch.float64))


def test_infer_refine_positions_writes_the_corrected_positions(
    tmp_path, tiny_scan, tiny_bundle, run_cli, user_error
):
    """``infer --refine_positions`` stores the corrected positions, which make a scan again
    (``--export_scan`` writes it, the given positions as its nominal ones)."""
    from ptychopinn import workflows as pp
    from ptychopinn.bundle import save_bundle
    from ptychopinn.io.npz import write_scan_npz
    from ptychopinn.reconstruction import Reconstruction

    b = tiny_bundle
    save_bundle(tmp_path / "wts.h5.zip", b.config, b.normalization, b.net, b.probe)
    write_scan_npz(tmp_path / "scan.npz", tiny_scan)
    args = ("infer", "--model_path", "wts.h5.zip", "--data", "scan.npz", "--refine", "8")
    user_error(
        run_cli(*args, "--export_scan", "c.npz", "--output_dir", "X", cwd=tmp_path),
        "--refine_positions",
    )
    assert not (tmp_path / "X").exists()
    result = run_cli(
        *args, "--refine_positions", "--export_scan", "corrected.npz", "--output_dir", "OUT",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rec = Reconstruction.load(tmp_path / "OUT" / "reconstruction.npz")
    assert rec.refinement.positions_refined
    moved = np.abs(rec.positions_px - tiny_scan.positions_px).max()
    assert 0 < moved <= 3.0  # moved, within the cap
    again = pp.read_scan(tmp_path / "corrected.npz")
    np.testing.assert_allclose(again.positions_px, rec.positions_px)
    given = tiny_scan.nominal_positions_px  # the simulated raster before its jitter
    np.testing.assert_allclose(again.nominal_positions_px, given)
    np.testing.assert_array_equal(np.asarray(again.diffraction), np.asarray(tiny_scan.diffraction))


def test_refine_auto_corrects_positions_and_keeps_the_result(scan):
    """From a start made with wrong positions (a network trained on them), auto refinement
    with position correction keeps its passes: the held-out patterns' positions are corrected
    against the twin too (at their input positions they could never become more likely, and
    auto kept the start: measured on a 576-pattern GRF, 0.80 -> 0.80 before, 0.96 after)."""
    from ptychopinn.refine_auto import refine_auto

    truth = scan.positions_px
    wrong = truth + np.random.default_rng(0).normal(0, 1.0, truth.shape)
    scan_wrong = dataclasses.replace(scan, positions_px=wrong)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    norm = Normalization.from_scan(scan_wrong)
    start = refine(scan_wrong, probe, norm, None, RefineOptions(n_iter=20, batch_size=16))[0]
    opts = RefineOptions(
        n_iter=100, batch_size=16, object_lr=0.02, start_phase_sigma_px=0, anneal_start=0.0,
        warmup_passes=5.0, coarse_factor=0, position_lr=0.1,
    )  # fmt: skip
    rec, _, _ = refine_auto(scan_wrong, probe, norm, start, opts)
    assert rec.refinement.passes > 20 and rec.refinement.positions_refined
    assert _error(rec, truth) < 0.7 * _error(start, truth)
    assert _phase_ssim(rec, scan) > _phase_ssim(start, scan) + 0.2
