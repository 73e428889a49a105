"""Likelihood refinement: lowers the loss and improves on its start, with the training physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptychopinn.data.dataset import Normalization
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.evaluation import evaluate, scanned_region
from ptychopinn.physics.functional import normalize_probe
from ptychopinn.refinement import RefineOptions, refine


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(
        n=32, n_positions=100, object_kind="image", photons_per_pattern=1e6, seed=3
    )


def _phase_ssim(rec, scan) -> float:
    assert scan.object is not None
    box = scanned_region(rec.positions_px, scan.N, scan.object.shape)
    return evaluate(rec.on_object_grid(scan.object.shape), scan.object, crop_box=box).phase_ssim


def test_refinement_from_flat_recovers_the_object(scan):
    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    rec, _, trace = refine(scan, probe, norm, None, RefineOptions(n_iter=80, batch_size=16))
    assert trace.loss[-1] < trace.loss[0]
    assert np.all(np.diff(trace.loss[5:]) < 0.01 * abs(trace.loss[0]))  # no blow-up
    assert _phase_ssim(rec, scan) > 0.7


def _truth_start(scan, norm, phase_error=None):
    """The ground truth on the refinement canvas, in normalised units, as a start.

    ``phase_error`` (a function of the canvas shape) multiplies it by exp(i error).
    """
    from ptychopinn.reconstruction import Reconstruction
    from ptychopinn.stitching import CanvasGeometry

    geometry = CanvasGeometry.covering(scan.positions_px, scan.N)
    r0, c0 = geometry.origin_px
    h, w = geometry.shape
    truth = scan.object[r0 : r0 + h, c0 : c0 + w]
    # object amplitude in the normalised units: |O| rms over the illuminated area = 1 / scale
    scale = np.sqrt(norm.probe_power) * norm.amplitude_factor / (scan.N / 2)
    obj = truth * scale
    if phase_error is not None:
        obj = obj * np.exp(1j * phase_error((h, w)))
    return Reconstruction(
        obj.astype(np.complex64),
        geometry.origin_px,
        np.ones(geometry.shape, np.float32),
        scan.positions_px,
        N=scan.N,
    )


def test_refinement_keeps_the_truth_near_the_truth(scan):
    """Started at the ground truth, the likelihood optimum stays there (physics consistency)."""
    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    start = _truth_start(scan, norm)
    before = _phase_ssim(start, scan)
    rec, _, _ = refine(
        scan,
        probe,
        norm,
        start,
        RefineOptions(n_iter=3, batch_size=16, object_lr=0.005, start_phase_sigma_px=0),
    )
    assert before > 0.99
    assert _phase_ssim(rec, scan) > 0.9


def test_unknown_schedule_is_a_config_error(scan):
    from ptychopinn.errors import ConfigError

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    with pytest.raises(ConfigError, match="schedule"):
        refine(scan, probe, norm, None, RefineOptions(n_iter=1, schedule="step"))  # type: ignore[arg-type]


def test_collapsed_network_is_flagged_and_refinement_starts_flat(scan, caplog):
    """A network that predicts one patch for every pattern is reported, and not refined from."""
    from ptychopinn.bundle import Bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.inference import reconstruct
    from ptychopinn.models import build_network
    from ptychopinn.workflows import refine_reconstruction

    config = Config(
        model=ModelConfig(N=32, n_filters_scale=0.25, stem_stride=2, architecture="ptychopinn")
    )
    net = build_network(config.model)
    for decoder in (net.amplitude_decoder, net.phase_decoder):  # constant output
        torch.nn.init.zeros_(decoder.head.weight)
        torch.nn.init.zeros_(decoder.head.bias)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    bundle = Bundle(config, Normalization.from_scan(scan), net.eval(), probe, {})
    with caplog.at_level("WARNING"):
        rec = reconstruct(bundle, scan)
    assert rec.collapsed and rec.metadata["output_variation"] < 1e-6
    assert "collapsed" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        refined = refine_reconstruction(bundle, scan, rec, passes=1)
    assert "refining from a flat object" in caplog.text
    flat = refine_reconstruction(bundle, scan, None, passes=1)
    np.testing.assert_allclose(refined.object, flat.object)


def test_coarse_field_corrects_large_scale_phase_errors_faster(scan):
    """A start that is right in detail but wrong in large-scale phase (a network's typical
    error: per-patch constant phases that stitching could not infer) is corrected in fewer
    passes with the coarse correction field than by the canvas pixels alone."""
    from scipy.ndimage import gaussian_filter

    def error(shape):
        e = gaussian_filter(np.random.default_rng(0).standard_normal(shape), 8.0)
        return e / e.std()  # 1 rad rms, features of ~20 px

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    start = _truth_start(scan, norm, error)
    before = _phase_ssim(start, scan)
    scores = {}
    for factor in (0, 16):  # the start's large-scale phase kept, to isolate the coarse field
        options = RefineOptions(
            n_iter=20, batch_size=16, coarse_factor=factor, start_phase_sigma_px=0
        )
        rec, _, _ = refine(scan, probe, norm, start, options)
        scores[factor] = _phase_ssim(rec, scan)
    # measured: 0.18 at the start; 0.70 without, 0.75 with the coarse field after 20 passes
    assert before < 0.3 and scores[0] > before
    assert scores[16] > scores[0] + 0.03, (before, scores)


def test_bad_coarse_options_are_config_errors():
    from ptychopinn.errors import ConfigError

    with pytest.raises(ConfigError, match="coarse_factor"):
        RefineOptions(coarse_factor=-1)
    with pytest.raises(ConfigError, match="coarse_until"):
        RefineOptions(coarse_until=0.0)
    with pytest.raises(ConfigError, match="object_lr"):
        RefineOptions(object_lr=0.0)
    with pytest.raises(ConfigError, match="start_phase_sigma_px"):
        RefineOptions(start_phase_sigma_px=-1.0)


def test_discarding_the_starts_large_scale_phase_speeds_refinement_up(scan):
    """The network's large-scale phase is a guess (one pattern does not determine it); a start
    whose detail is right but whose large-scale phase is wrong refines to a better result in the
    same passes when that phase is discarded first (the default) than when it is kept."""
    from scipy.ndimage import gaussian_filter

    from ptychopinn.start import without_large_scale_phase

    def error(shape):
        e = gaussian_filter(np.random.default_rng(1).standard_normal(shape), 12.0)
        return 1.5 * e / e.std()  # 1.5 rad rms, features of ~30 px

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    start = _truth_start(scan, norm, error)
    kept, _, _ = refine(
        scan, probe, norm, start, RefineOptions(n_iter=10, batch_size=16, start_phase_sigma_px=0)
    )
    dropped, _, _ = refine(scan, probe, norm, start, RefineOptions(n_iter=10, batch_size=16))
    scores = [_phase_ssim(r, scan) for r in (start, kept, dropped)]
    # measured: 0.08 at the start; 0.47 kept, 0.97 discarded after 10 passes
    assert scores[2] > scores[1] + 0.2, scores
    # the helper: removes a smooth phase, keeps the amplitude and a constant-free detail
    obj = np.exp(1j * (error((40, 40)) + 0.1 * np.cos(np.arange(40) * 2.0)))
    out = without_large_scale_phase(obj.astype(np.complex64), 8.0)
    np.testing.assert_allclose(np.abs(out), 1.0, rtol=1e-5)
    assert np.std(np.angle(out[10:30, 10:30])) < 0.3 * np.std(np.angle(obj[10:30, 10:30]))
    assert without_large_scale_phase(obj, 0) is obj


def test_a_refined_start_keeps_its_large_scale_phase(scan):
    """Refining on from a refined reconstruction keeps its large-scale phase, which came from
    the overlaps (discarding it cost 0.03-0.06 phase SSIM after 20 more passes on the quality
    benchmark's GRF and image scans); a network's start loses it."""
    from ptychopinn.reconstruction import RefinementRecord

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    y, x = np.indices((200, 200))
    smooth = 1.5 * np.sin(2 * np.pi * (y + x) / 150)  # a large-scale phase, up to 1.5 rad
    network = _truth_start(scan, norm, lambda shape: smooth[: shape[0], : shape[1]])
    refined = network.replace(refinement=RefinementRecord("100", 100, "100 passes, as asked"))
    options = RefineOptions(n_iter=0, coarse_factor=0)  # the start as refinement takes it
    kept = refine(scan, probe, norm, refined, options)[0]
    dropped = refine(scan, probe, norm, network, options)[0]
    lit = kept.coverage > 0  # every pixel the probe reaches
    assert lit.mean() > 0.8
    np.testing.assert_allclose(kept.object[lit], refined.object[lit], atol=1e-6)
    change = np.angle(dropped.object[lit] * np.conj(network.object[lit]))
    assert np.abs(change).max() > 1.0  # most of the smooth phase is gone


def test_refinement_fills_what_the_start_left_uncovered(scan):
    """A network's stitched start covers only the central support of each patch, so the
    corners of the scanned region between the supports are empty. Refinement fits every pixel
    the probe reaches; its result covers them too (it used to report them as empty, zero)."""
    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    start = _truth_start(scan, norm)
    start.object[:] *= np.exp(2j)  # an arbitrary global phase, as a network's stitched object has
    band = np.zeros(start.coverage.shape, bool)
    band[:14], band[-14:], band[:, :14], band[:, -14:] = True, True, True, True
    start.coverage[band] = 0
    start.object[band] = 0
    box = scanned_region(scan.positions_px, scan.N, scan.object.shape)
    r0, c0 = start.origin_px
    inside = np.zeros(scan.object.shape, bool)
    inside[box[0] : box[1], box[2] : box[3]] = True
    empty_in_box = inside[r0 : r0 + band.shape[0], c0 : c0 + band.shape[1]] & band
    assert empty_in_box.sum() > 100  # the start leaves part of the scanned region empty
    rec, _, _ = refine(scan, probe, norm, start, RefineOptions(n_iter=10, batch_size=16))
    reached = rec.coverage[empty_in_box] > 0  # a box corner can lie beyond every probe window
    assert reached.mean() > 0.99
    assert np.all(np.abs(rec.object[empty_in_box][reached]) > 0)
    assert rec.coverage.max() > 10 * np.median(rec.coverage[band & (rec.coverage > 0)])
    # measured 0.63 -> 0.978; 0.936 when the empty pixels' unit fill (phase 0) was smoothed
    # into the start's large-scale phase, which then no longer matched at the boundary
    assert _phase_ssim(start, scan) < 0.7
    assert _phase_ssim(rec, scan) > 0.96


def test_refine_auto_keeps_the_start_when_the_data_cannot_improve_it(scan):
    """Started at the truth, no pass makes the held-out patterns significantly more likely:
    auto returns the start unchanged and says why."""
    from ptychopinn.refine_auto import refine_auto

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    start = _truth_start(scan, norm)
    options = RefineOptions(
        n_iter=30, batch_size=16, object_lr=0.02, start_phase_sigma_px=0, min_passes=5, patience=5
    )
    rec, _, trace = refine_auto(scan, probe, norm, start, options)
    assert rec.refinement.passes == 0 and "start" in rec.refinement.stop_reason
    np.testing.assert_array_equal(rec.object, start.object)
    # it gave up after its patience, and its steps annealed over as many passes
    assert len(trace.held_out) <= 2 * options.patience + 1


def test_refine_auto_anneals_a_plateau_at_large_steps_before_it_stops(scan):
    """A held-out plateau while the steps are large is the optimiser's step noise: auto
    anneals the steps over its patience before it stops, and the held-out likelihood, worse
    at the large steps, recovers as they shrink."""
    from ptychopinn.refine_auto import refine_auto

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    start = _truth_start(scan, norm)
    options = RefineOptions(
        n_iter=60, batch_size=16, object_lr=0.05, schedule="constant",
        start_phase_sigma_px=0, min_passes=6, patience=4,
    )  # fmt: skip
    rec, _, trace = refine_auto(scan, probe, norm, start, options)
    assert len(trace.held_out) == options.min_passes + options.patience
    assert "annealed" in rec.refinement.stop_reason
    noisy = max(trace.held_out[: options.min_passes])
    assert trace.held_out[-1] < noisy  # smaller steps, less noise in the object


def test_refine_auto_refines_a_poor_start_and_keeps_the_best_held_out_pass(scan):
    """From a flat object there is much to gain: auto refines on all patterns while a twin
    without the held-out ones decides, and keeps the all-pattern object of the pass where the
    held-out patterns were likeliest: the object fixed passes reach with the same schedule."""
    from ptychopinn.refine_auto import refine_auto

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    options = RefineOptions(n_iter=40, batch_size=16, anneal_start=0.0, patience=5)
    rec, _, trace = refine_auto(scan, probe, norm, None, options)
    r = rec.refinement
    assert r.requested == "auto" and r.passes > 10 and r.start == "flat"
    assert r.final_nll < r.network_nll
    assert r.passes == int(np.argmin(trace.held_out)) + 1  # the best held-out pass is kept
    fixed, _, _ = refine(scan, probe, norm, None, options)  # the same shuffles and schedule
    if r.passes == options.n_iter:
        np.testing.assert_allclose(rec.object, fixed.object, atol=1e-6)
    assert _phase_ssim(rec, scan) > 0.5


def test_bad_pixels_count_in_no_likelihood(scan):
    """A hot pixel flagged in ``bad_pixels`` changes nothing: the network reads 0 there and
    refinement, the phase choice's likelihood and training leave the pixel out."""
    import dataclasses

    from ptychopinn.inference import pattern_nll
    from ptychopinn.stitching import CanvasGeometry
    from ptychopinn.training.module import PtychoPINNModule

    bad = np.zeros((scan.N, scan.N), bool)
    bad[3, 5] = bad[20, 11] = True
    flagged = dataclasses.replace(scan, bad_pixels=bad)
    diffraction = np.asarray(scan.diffraction).copy()
    diffraction[:, 3, 5] = 10**6  # hot, and flagged
    hot = dataclasses.replace(scan, diffraction=diffraction, bad_pixels=bad)
    np.testing.assert_array_equal(hot.amplitudes()[:, bad], 0)
    np.testing.assert_array_equal(hot.amplitudes(), flagged.amplitudes())

    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    options = RefineOptions(n_iter=3, batch_size=16)
    a = refine(flagged, probe, norm, None, options)[0].object
    b = refine(hot, probe, norm, None, options)[0].object
    np.testing.assert_allclose(a, b, atol=1e-6)
    c = refine(scan, probe, norm, None, options)[0].object  # unflagged: the pixels count
    assert not np.allclose(a, c, atol=1e-4)
    geometry = CanvasGeometry.covering(scan.positions_px, scan.N)
    obj = [torch.ones(geometry.shape, dtype=torch.complex64)]
    index = np.arange(scan.n_patterns)
    assert pattern_nll(obj, geometry, hot, index, probe, norm) == pattern_nll(
        obj, geometry, flagged, index, probe, norm
    )

    config = {"model": {"N": scan.N, "n_filters_scale": 0.125}, "training": {}}
    good = torch.from_numpy(flagged.good_pixels)
    module = PtychoPINNModule(config, norm.to_dict(), probe=probe, good_pixels=good)
    x = torch.rand(1, 9, scan.N, scan.N)
    batch = {"amplitude": x, "offsets": torch.randn(1, 9, 2)}
    other = {**batch, "amplitude": x.clone()}
    other["amplitude"][..., 20, 11] = 50.0  # the measured value at a bad pixel
    module.forward = lambda amplitude: module.__class__.forward(module, x)  # the same prediction
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):
        losses = [module._common_step(b, "val")[0] for b in (batch, other)]
    assert torch.equal(losses[0], losses[1])


def test_refinement_reports_its_progress(scan, caplog):
    """A line every tenth of the passes (the last one is the summary's), with loss and time."""
    norm = Normalization.from_scan(scan)
    probe = normalize_probe(torch.from_numpy(scan.probe))
    with caplog.at_level("INFO", logger="ptychopinn.refinement"):
        rec, _, trace = refine(scan, probe, norm, None, RefineOptions(n_iter=20, batch_size=50))
    progress = [r.getMessage() for r in caplog.records if "refine: pass" in r.getMessage()]
    assert len(progress) == 9, progress  # passes 2, 4, ..., 18
    assert progress[0].startswith("refine: pass 2 of at most 20, loss ")
    assert "R-factor" in progress[0]
    # the amplitude R-factor: a normalised misfit that falls as the object forms
    assert 0 < trace.r_factor[-1] < 0.95 * trace.r_factor[0] < 1
    assert rec.refinement.r_factor == trace.r_factor[-1]
