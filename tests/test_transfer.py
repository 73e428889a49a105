"""Train once, reconstruct many: diverse simulated training objects, scans simulated as the
measured one was taken, dose carried between scans, the model's range checked at inference,
and adaptation to a new scan through the likelihood."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch

from ptychopinn.data.dataset import Normalization
from ptychopinn.data.grouping import training_groups
from ptychopinn.data.samples import TRAINING_KINDS, make_object, make_probe, training_object
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.data.synthetic import simulate_like, with_synthetic
from ptychopinn.io.summary import median_spacing_px
from ptychopinn.physics.functional import normalize_probe
from ptychopinn.transfer import (
    adapt,
    adapted_if_new,
    compatibility,
    network_fit_ratio,
    probe_similarity,
)


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(n=32, n_positions=81, object_kind="lines", photons_per_pattern=1e5, seed=3)


@pytest.mark.parametrize("kind", ["shapes", "texture", "star"])
def test_new_object_kinds_span_their_ranges(kind):
    obj = make_object(kind, (96, 96), np.random.default_rng(0), amplitude_range=(0.3, 1.0))
    amplitude, phase = np.abs(obj), np.angle(obj)
    assert obj.dtype == np.complex64 and obj.shape == (96, 96)
    assert amplitude.min() == pytest.approx(0.3, abs=0.02) and amplitude.max() <= 1.0 + 1e-6
    assert np.ptp(phase) > 2.5  # the default span is +-pi/2


def test_training_objects_are_diverse():
    rng = np.random.default_rng(0)
    objects = [training_object((64, 64), rng) for _ in range(24)]
    spans = [np.ptp(np.angle(o)) for o in objects]
    lows = [np.abs(o).min() for o in objects]
    assert max(spans) > 2 * min(spans)  # random phase range
    assert any(low > 0.999 for low in lows) and any(
        low < 0.4 for low in lows
    )  # phase-only, absorbing
    assert set(TRAINING_KINDS).isdisjoint({"image", "star"})  # kept for testing unseen classes


def test_simulate_like_reproduces_the_scan_it_copies(scan):
    """The scan's own object imaged as the scan was taken gives its patterns back: exactly
    without noise, with the same counts statistics with it."""
    clean = simulate_scan(
        n=32, n_positions=81, object_kind="lines", photons_per_pattern=None, seed=3
    )
    again = simulate_like(clean, clean.object, np.random.default_rng(1))
    assert again.units == "amplitude"
    np.testing.assert_allclose(again.amplitudes(), clean.amplitudes(), rtol=1e-4, atol=1e-4)
    noisy = simulate_like(scan, scan.object, np.random.default_rng(1))
    assert noisy.units == "counts" and noisy.diffraction.dtype == np.int32
    assert noisy.mean_total_intensity() == pytest.approx(scan.mean_total_intensity(), rel=0.01)
    assert not np.array_equal(noisy.diffraction, scan.diffraction)  # its own noise


def test_with_synthetic_keeps_objects_apart_and_carries_the_detector(scan):
    bad = np.zeros((32, 32), bool)
    bad[3, 4] = True
    measured = dataclasses.replace(scan, bad_pixels=bad, background=np.full((32, 32), 2.0))
    mixed = with_synthetic(measured, 3, seed=0)
    m = scan.n_patterns
    assert mixed.n_patterns == 4 * m
    assert np.array_equal(np.unique(mixed.scan_index), [0, 1, 2, 3])
    assert np.array_equal(np.asarray(mixed.diffraction[:m]), np.asarray(scan.diffraction))
    assert mixed.bad_pixels is not None and mixed.bad_pixels[3, 4]
    assert mixed.background is not None and np.array_equal(mixed.object, scan.object)
    # every simulated scan has the measured mean counts (plus the background) and its own object
    totals = [np.asarray(mixed.diffraction[k * m : (k + 1) * m], np.float64).sum((1, 2)).mean()
              for k in range(4)]  # fmt: skip
    assert totals[1:] == pytest.approx([totals[0] + 2.0 * 32 * 32] * 3, rel=0.02)
    assert not np.array_equal(mixed.diffraction[m : 2 * m], mixed.diffraction[2 * m : 3 * m])
    groups = training_groups(mixed.positions_px, 1, 3, 2, None, 0, mixed.scan_index)
    owners = mixed.scan_index[groups.indices]  # (G, P): no group mixes two objects
    assert np.all(owners == owners[:, :1])


def test_normalisation_carries_a_new_dose_but_keeps_transmission(scan):
    trained = Normalization.from_scan(scan)
    low = simulate_scan(n=32, n_positions=81, object_kind="image", photons_per_pattern=1e3, seed=4)
    low = dataclasses.replace(low, probe=scan.probe)  # the same probe file, 100x less exposure
    carried = trained.for_scan(low)
    mean = float(np.mean(np.sum((low.amplitudes() * carried.amplitude_factor) ** 2, axis=(1, 2))))
    assert mean == pytest.approx((32 / 2) ** 2, rel=0.3)  # the network sees the training level
    assert carried.nphotons == pytest.approx(trained.nphotons * trained.dose_ratio(low))
    # the product factor^2 * nphotons is the Poisson scale's invariant: counts stay counts
    assert carried.amplitude_factor**2 * carried.nphotons == pytest.approx(
        trained.amplitude_factor**2 * trained.nphotons, rel=1e-6
    )
    # an absorbing sample at the same exposure (half the counts) keeps its lower amplitude
    dimmer = dataclasses.replace(scan, diffraction=(np.asarray(scan.diffraction) // 2))
    assert trained.for_scan(dimmer) == trained.for_scan(scan)


def test_compatibility_names_another_probe_or_step(scan, tiny_bundle, tiny_scan):
    assert compatibility(tiny_bundle, tiny_scan) == []
    other = dataclasses.replace(tiny_scan, probe=make_probe("gaussian", 32, diameter_px=20)[None])
    assert probe_similarity(tiny_scan.probe, other.probe) < 0.9
    assert "probe" in " ".join(compatibility(tiny_bundle, other))
    record = {"run": {"training_data": {"step_px": 2 * median_spacing_px(tiny_scan.positions_px)}}}
    wider = dataclasses.replace(tiny_bundle, manifest=record)
    assert "scan step" in " ".join(compatibility(wider, tiny_scan))


def test_adaptation_improves_the_likelihood_and_leaves_the_bundle(tiny_bundle, tiny_scan):
    before = {k: v.clone() for k, v in tiny_bundle.net.state_dict().items()}
    adapted, record = adapt(tiny_bundle, tiny_scan, steps=30)
    assert record["steps"] == 30
    assert record["loss_after"] < record["loss_before"]
    for k, v in tiny_bundle.net.state_dict().items():
        assert torch.equal(v, before[k])
    changed = any(
        not torch.equal(v, adapted.net.state_dict()[k])
        for k, v in before.items()
        if v.is_floating_point()
    )
    assert changed and not adapted.net.training
    assert torch.equal(adapted.probe, tiny_bundle.probe)


def test_auto_adaptation_only_for_a_scan_unlike_the_training_data(tiny_bundle, tiny_scan):
    """``--adapt auto`` adapts where the network explains the scan much worse than it
    explained its training data, and leaves the model alone otherwise."""
    from ptychopinn import workflows as pp

    network = pp.reconstruct(tiny_bundle, tiny_scan, refine=0)
    novel = dataclasses.replace(tiny_bundle, manifest={"run": {"val_r_factor": 0.01}})
    adapted, record = adapted_if_new(novel, tiny_scan, network, steps=5)
    assert record is not None and record["auto"] and record["steps"] == 5
    assert record["network_r_factor"] > 1.5 * 0.01
    familiar = dataclasses.replace(tiny_bundle, manifest={"run": {"val_r_factor": 10.0}})
    same, none = adapted_if_new(familiar, tiny_scan, network, steps=5)
    assert none is None and same is familiar
    unknown, none = adapted_if_new(tiny_bundle, tiny_scan, network, steps=5)  # no record
    assert none is None and unknown is tiny_bundle
    # the second test: the fit over the noise floor against the one on the training scan,
    # which training records (the R-factor record then may say nothing)
    ratio = network_fit_ratio(tiny_bundle, tiny_scan)
    assert ratio is not None and ratio > 1.0

    def recorded(value: float) -> Any:
        run = {"val_r_factor": 10.0, "training_data": {"network_fit_ratio": value}}
        return dataclasses.replace(tiny_bundle, manifest={"run": run})

    adapted, record = adapted_if_new(recorded(ratio / 2), tiny_scan, network, steps=5)
    assert record is not None and record["network_fit_ratio"] == pytest.approx(ratio, rel=1e-3)
    same, none = adapted_if_new(recorded(ratio), tiny_scan, network, steps=5)
    assert none is None
    # the network alone stays the network alone
    alone = pp.reconstruct(novel, tiny_scan, refine=0)
    assert "adapt" not in alone.metadata
    np.testing.assert_array_equal(alone.object, network.object)


def test_train_with_synthetic_objects_then_infer_with_adapt(tmp_path, run_cli):
    """Through the commands: the bundle says what it trained on; infer adapts, records it,
    and warns when the scan's probe is outside the model's."""
    sim = simulate_scan(n=32, n_positions=64, object_kind="lines", photons_per_pattern=1e5, seed=1)
    from ptychopinn.io.npz import write_scan_npz

    write_scan_npz(tmp_path / "train.npz", sim)
    other = simulate_scan(n=32, n_positions=64, object_kind="star", photons_per_pattern=1e5, seed=2)
    probe = normalize_probe(torch.from_numpy(make_probe("gaussian", 32, diameter_px=20))[None])
    write_scan_npz(tmp_path / "new.npz", dataclasses.replace(other, probe=probe.numpy()))
    trained = run_cli(
        "train", "--train_data", "train.npz", "--output_dir", "run", "--preset", "fast",
        "--max_epochs", "1", "--n_filters_scale", "0.25", "--synthetic_objects", "2",
        cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    import zipfile

    manifest = json.loads(zipfile.ZipFile(tmp_path / "run" / "wts.h5.zip").read("manifest.json"))
    assert manifest["run"]["training_data"]["synthetic_objects"] == 2
    assert manifest["run"]["training_data"]["step_px"] > 0
    assert manifest["run"]["training_data"]["network_fit_ratio"] > 0
    inferred = run_cli(
        "infer", "--model_path", "run", "--data", "new.npz", "--output_dir", "out",
        "--adapt", "1", "--refine", "0", cwd=tmp_path,
    )  # fmt: skip
    assert inferred.returncode == 0, inferred.stderr
    assert "differs from the model's training probe" in inferred.stderr
    assert "adapted the model" in inferred.stderr
    with np.load(tmp_path / "out" / "reconstruction.npz") as data:
        metadata = json.loads(str(data["metadata"]))
    assert metadata["adapt"]["steps"] >= 1
