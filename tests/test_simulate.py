"""Simulated scans: determinism, shapes, photon statistics and forward-model consistency."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from ptychopinn.data import simulate
from ptychopinn.data.samples import (
    ObjectKind,
    ProbeKind,
    ScanKind,
    make_object,
    make_probe,
    make_scan_positions,
)
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.npz import read_npz, write_scan_npz
from ptychopinn.physics.functional import far_field_amplitude

SMALL: dict[str, Any] = {"n": 32, "n_positions": 36}


def _model_amplitude(scan) -> np.ndarray:
    """|F(probe * Y)| from the scan's own probe and ground-truth patches."""
    return far_field_amplitude(torch.from_numpy(scan.probe), torch.from_numpy(scan.patches)).numpy()


def test_same_seed_same_scan_other_seed_other_scan() -> None:
    a, b = simulate_scan(seed=3, **SMALL), simulate_scan(seed=3, **SMALL)
    c = simulate_scan(seed=4, **SMALL)
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    np.testing.assert_array_equal(a.positions_px, b.positions_px)
    np.testing.assert_array_equal(a.object, b.object)
    assert not np.array_equal(a.diffraction, c.diffraction)
    assert not np.array_equal(a.positions_px, c.positions_px)


def test_same_seed_same_counts_whatever_the_thread_count() -> None:
    """The forward model runs on one thread, so the counts cannot depend on how many threads
    MKL's FFT happens to get (it takes fewer on a busy machine, and the last-bit differences
    that follow change Poisson counts); the caller's thread count is restored."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = simulate_scan(seed=3, **SMALL)
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        b = simulate_scan(seed=3, **SMALL)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(a.diffraction, b.diffraction)


def test_photon_count_leaves_object_and_positions_unchanged() -> None:
    a = simulate_scan(seed=1, photons_per_pattern=1e4, **SMALL)
    b = simulate_scan(seed=1, photons_per_pattern=None, **SMALL)
    np.testing.assert_array_equal(a.object, b.object)
    np.testing.assert_array_equal(a.positions_px, b.positions_px)


def test_shapes_dtypes_and_fields() -> None:
    scan = simulate_scan(n=32, n_positions=50, jitter_px=0.5, seed=0)
    m, n = 50, 32
    assert scan.diffraction.shape == (m, n, n) and scan.diffraction.dtype == np.int32
    assert scan.units == "counts" and scan.source == "simulated"
    assert scan.positions_px.shape == (m, 2) and scan.positions_px.dtype == np.float64
    assert scan.probe.shape == (1, n, n) and scan.probe.dtype == np.complex64
    assert scan.object is not None and scan.object.dtype == np.complex64
    assert scan.patches is not None and scan.patches.shape == (m, n, n)
    np.testing.assert_array_equal(scan.scan_index, np.zeros(m))
    jitter = scan.positions_px - scan.nominal_positions_px
    assert 0.3 < jitter.std() < 0.7
    assert scan.metadata["object_kind"] == "grf" and scan.metadata["seed"] == 0
    assert scan.metadata["photons_per_pattern"] == 1e6


def test_patches_lie_on_the_object_with_the_patch_convention() -> None:
    """Integer positions: patch pixel i is object pixel p - N // 2 + i, and inside the object."""
    n = 32
    scan = simulate_scan(n=n, n_positions=9, step_px=5.0, jitter_px=0.0, photons_per_pattern=None)
    pos, obj, patches = scan.positions_px, scan.object, scan.patches
    assert obj is not None and patches is not None
    np.testing.assert_array_equal(pos, np.round(pos))
    for (y, x), patch in zip(pos.astype(int), patches, strict=True):
        top, left = y - n // 2, x - n // 2
        assert top >= 0 and left >= 0 and top + n <= obj.shape[0] and left + n <= obj.shape[1]
        np.testing.assert_allclose(patch, obj[top : top + n, left : left + n], atol=1e-6)


def test_object_size_is_honoured_or_refused() -> None:
    scan = simulate_scan(object_size=(120, 130), **SMALL)
    assert scan.object is not None and scan.object.shape == (120, 130)
    with pytest.raises(ConfigError, match="object_size"):
        simulate_scan(object_size=(40, 40), **SMALL)


def test_mean_counts_match_photons_per_pattern() -> None:
    photons = 1e5
    scan = simulate_scan(n=32, n_positions=64, photons_per_pattern=photons, seed=2)
    totals = scan.diffraction.sum(axis=(1, 2))
    assert abs(totals.mean() / photons - 1) < 0.05
    # the stored probe reproduces the expected counts exactly
    expected = np.sum(_model_amplitude(scan).astype(np.float64) ** 2, axis=(1, 2))
    assert abs(expected.mean() / photons - 1) < 1e-4


def test_noise_free_diffraction_is_the_forward_model_of_probe_and_patches() -> None:
    scan = simulate_scan(n=32, n_positions=40, photons_per_pattern=None, seed=5)
    assert scan.units == "amplitude" and scan.diffraction.dtype == np.float32
    model = _model_amplitude(scan)
    rel = np.abs(model - scan.diffraction).max() / scan.diffraction.max()
    assert rel < 1e-4


@pytest.mark.parametrize(
    ("object_kind", "probe_kind", "scan_kind"),
    list(
        itertools.product(
            ["lines", "grf", "image"], ["disk", "gaussian"], ["raster", "spiral", "random"]
        )
    ),
)
def test_every_kind_runs(
    object_kind: ObjectKind, probe_kind: ProbeKind, scan_kind: ScanKind
) -> None:
    scan = simulate_scan(
        n=32, n_positions=16, object_kind=object_kind, probe_kind=probe_kind, scan_kind=scan_kind
    )
    assert scan.n_patterns == 16 and np.all(np.asarray(scan.diffraction) >= 0)


@pytest.mark.parametrize("kind", ["lines", "grf", "image"])
def test_object_amplitude_and_phase_ranges(kind: ObjectKind) -> None:
    obj = make_object(
        kind, (50, 70), np.random.default_rng(0), max_phase_rad=1.0, amplitude_range=(0.3, 0.9)
    )
    assert obj.shape == (50, 70) and obj.dtype == np.complex64
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() >= 0.3 - 1e-5 and amp.max() <= 0.9 + 1e-5
    assert phase.min() >= -1.0 - 1e-5 and phase.max() <= 1.0 + 1e-5
    assert amp.std() > 0.05 and phase.std() > 0.1  # not flat


@pytest.mark.parametrize("kind", ["raster", "spiral"])
def test_scan_step_is_the_nearest_neighbour_distance(kind: ScanKind) -> None:
    pos = make_scan_positions(kind, 200, 6.0, np.random.default_rng(0))
    assert pos.shape == (200, 2) and np.all(np.abs(pos.mean(axis=0)) < 6.0)
    dist, _ = cKDTree(pos).query(pos, k=2)
    assert abs(np.median(dist[:, 1]) / 6.0 - 1) < 0.1


def test_random_scan_density_and_jitter() -> None:
    rng = np.random.default_rng(0)
    pos = make_scan_positions("random", 400, 5.0, rng)
    side = np.ptp(pos, axis=0)
    assert np.all(side < 5.0 * 20) and np.all(side > 5.0 * 18)
    nominal = make_scan_positions("raster", 400, 5.0, rng)
    jittered = make_scan_positions("raster", 400, 5.0, rng, jitter_px=1.0)
    assert 0.9 < (jittered - nominal).std() < 1.1


@pytest.mark.parametrize(
    ("kind", "n"), list(itertools.product(["disk", "gaussian"], [32, 64, 128]))
)
def test_probe_is_centred_normalised_and_inside_the_central_half(kind: ProbeKind, n: int) -> None:
    probe = make_probe(kind, n)
    intensity = np.abs(probe.astype(np.complex128)) ** 2
    assert probe.shape == (n, n) and probe.dtype == np.complex64
    assert abs(intensity.sum() / (n / 2) ** 2 - 1) < 1e-5
    ar = np.arange(n) - n // 2
    r = np.hypot(ar[:, None], ar[None, :])
    assert intensity[r <= n / 4].sum() / intensity.sum() > 0.95
    centroid = [(intensity.sum(axis=1 - a) * ar).sum() / intensity.sum() for a in (0, 1)]
    np.testing.assert_allclose(centroid, 0.0, atol=0.5)


def test_disk_probe_has_fresnel_rings() -> None:
    """The defocused disk is not a smooth blob: its radial amplitude profile oscillates."""
    probe = make_probe("disk", 128)
    profile = np.abs(probe[64, 64:100])
    turns = np.sum(np.diff(np.sign(np.diff(profile))) != 0)
    assert turns >= 3


def test_given_probe_is_used_as_is_without_noise() -> None:
    probe = make_probe("gaussian", 32, diameter_px=8.0) * 3
    scan = simulate_scan(probe=probe, photons_per_pattern=None, **SMALL)
    np.testing.assert_array_equal(scan.probe[0], probe)
    assert scan.metadata["probe_kind"] == "given"
    with pytest.raises(DataError, match="probe"):
        simulate_scan(probe=np.ones((16, 16), np.complex64), **SMALL)


def test_bad_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="object_kind"):
        simulate_scan(object_kind="cat", **SMALL)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scan_kind"):
        simulate_scan(scan_kind="zigzag", **SMALL)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="photons_per_pattern"):
        simulate_scan(photons_per_pattern=0, **SMALL)
    with pytest.raises(ConfigError, match="jitter_px"):
        simulate_scan(jitter_px=-1.0, **SMALL)
    with pytest.raises(ConfigError, match="defocus"):
        make_probe("disk", 32, diameter_px=8.0, defocus=10.0)


def test_large_scans_drop_the_patches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(simulate, "PATCHES_LIMIT_BYTES", 1000)
    assert simulate_scan(**SMALL).patches is None


def test_simulated_scan_round_trips_through_npz(tmp_path) -> None:
    scan = simulate_scan(**SMALL)
    write_scan_npz(tmp_path / "scan.npz", scan)
    back = read_npz(tmp_path / "scan.npz")
    assert back.units == "counts"
    np.testing.assert_array_equal(back.diffraction, scan.diffraction)
    np.testing.assert_array_equal(back.positions_px, scan.positions_px)
    np.testing.assert_array_equal(back.probe, scan.probe)
    np.testing.assert_array_equal(back.patches, scan.patches)
