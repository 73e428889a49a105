"""Evaluation: metrics are invariant to what a reconstruction cannot determine."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import ndimage
from skimage import data
from skimage.transform import resize

from ptychopinn.errors import DataError
from ptychopinn.evaluation import (
    align,
    compare,
    evaluate,
    frc,
    scanned_region,
    write_comparison_figure,
)

SIZE = 128
BOX = (16, 112, 16, 112)  # scanned region, a 16-px margin inside the object


@pytest.fixture(scope="module")
def obj() -> np.ndarray:
    """Smooth random amplitude in [0.5, 1], phase = camera image scaled to +-1 rad."""
    np_rng = np.random.default_rng(0)
    camera = resize(data.camera().astype(np.float64), (SIZE, SIZE), anti_aliasing=True)
    phase = 2 * (camera - camera.min()) / np.ptp(camera) - 1
    amp = ndimage.gaussian_filter(np_rng.normal(size=(SIZE, SIZE)), 4)
    amp = 0.5 + 0.5 * (amp - amp.min()) / np.ptp(amp)
    return amp * np.exp(1j * phase)


def fourier_shift(img: np.ndarray, shift: tuple[float, float]) -> np.ndarray:
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), shift))


def noisy(img: np.ndarray, sigma: float, blur: float = 0.0, seed: int = 1) -> np.ndarray:
    np_rng = np.random.default_rng(seed)
    out = img + sigma * (np_rng.normal(size=img.shape) + 1j * np_rng.normal(size=img.shape))
    if blur:
        out = ndimage.gaussian_filter(out.real, blur) + 1j * ndimage.gaussian_filter(out.imag, blur)
    return out


def assert_near_identical(m, *, tol: float = 1.0) -> None:
    assert m.amplitude_ssim > 1 - 0.01 * tol and m.phase_ssim > 1 - 0.01 * tol
    assert m.amplitude_mae < 0.005 * tol and m.phase_mae < 0.01 * tol
    assert m.frc50_rings is None and m.frc_1_7_rings is None
    assert min(m.frc_curve[1:]) > 1 - 0.05 * tol


def test_identical_is_perfect(obj: np.ndarray) -> None:
    m = evaluate(obj, obj, crop_box=BOX)
    assert m.amplitude_ssim == pytest.approx(1.0) and m.phase_ssim == pytest.approx(1.0)
    assert m.amplitude_mae == pytest.approx(0.0, abs=1e-12)
    assert m.phase_mae == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(m.frc_curve[1:], 1.0) and np.allclose(m.frc_phase_curve[1:], 1.0)
    assert m.registration_shift_px == (0.0, 0.0) and m.crop_box == BOX
    assert m.phase_psnr_db > 100
    d = dataclasses.replace(m, phase_psnr_db=math.inf).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["phase_psnr_db"] is None and "psnr_data_range" in d


@pytest.mark.parametrize(
    "transform",
    [
        pytest.param(lambda o, yy, xx: o * np.exp(0.7j), id="global-phase"),
        pytest.param(lambda o, yy, xx: o * np.exp(1j * (0.2 + 0.06 * yy - 0.04 * xx)), id="ramp"),
        pytest.param(lambda o, yy, xx: fourier_shift(o, (1.3, -0.6)), id="subpixel-shift"),
        pytest.param(
            lambda o, yy, xx: fourier_shift(o, (-2.4, 0.7)) * np.exp(1j * (1.0 + 0.05 * xx)),
            id="shift+ramp",
        ),
    ],
)
def test_invariances(obj: np.ndarray, transform) -> None:
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    m = evaluate(transform(obj, yy, xx), obj, crop_box=BOX)
    assert_near_identical(m)


def test_shift_is_recovered_with_sign(obj: np.ndarray) -> None:
    m = evaluate(fourier_shift(obj, (1.3, -0.6)), obj, crop_box=BOX)
    assert m.registration_shift_px == pytest.approx((-1.3, 0.6), abs=0.06)
    r0, r1, c0, c1 = m.crop_box
    assert BOX[0] <= r0 < r1 <= BOX[1] and BOX[2] <= c0 < c1 <= BOX[3]


def test_removed_phase_is_reported(obj: np.ndarray) -> None:
    assert evaluate(obj * np.exp(0.7j), obj, crop_box=BOX).global_phase_rad == pytest.approx(0.7)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    steep = obj * np.exp(1j * (0.5 * yy + 2.5 * xx))  # wraps every few pixels
    m = evaluate(steep, obj, crop_box=BOX)
    assert m.phase_ramp_rad_per_px == pytest.approx((0.5, 2.5), abs=1e-6)
    assert_near_identical(m)


def test_amplitude_scale_is_removed(obj: np.ndarray) -> None:
    m = evaluate(1.7 * obj, obj, crop_box=BOX)
    assert m.amplitude_scale == pytest.approx(1 / 1.7)
    assert m.amplitude_mae < 1e-9 and m.amplitude_ssim == pytest.approx(1.0)


def test_degradation_ranks_below_mild_noise(obj: np.ndarray) -> None:
    mild = evaluate(noisy(obj, 0.02), obj, crop_box=BOX)
    bad = evaluate(noisy(obj, 0.1, blur=1.5), obj, crop_box=BOX)
    for name in ("amplitude_ssim", "phase_ssim", "amplitude_psnr_db", "phase_psnr_db"):
        assert getattr(bad, name) < getattr(mild, name), name
    assert bad.phase_mae > mild.phase_mae
    never = len(mild.frc_curve)
    assert bad.frc50_rings is not None
    assert bad.frc50_rings < (mild.frc50_rings or never)
    assert bad.frc_1_7_rings is None or bad.frc_1_7_rings > bad.frc50_rings


def test_resolution_from_pixel_size(obj: np.ndarray) -> None:
    m = evaluate(noisy(obj, 0.1, blur=1.5), obj, crop_box=BOX, pixel_size_m=1e-8)
    assert m.frc50_rings is not None
    assert m.frc50_resolution_m == pytest.approx(1e-8 * m.frc_n_pixels / m.frc50_rings)
    assert evaluate(obj, obj, crop_box=BOX).frc50_resolution_m is None


def test_frc_non_square_uses_short_side() -> None:
    img = np.random.default_rng(3).normal(size=(40, 64))
    curve = frc(img, img)
    assert len(curve) == 40 // 2 + 1 and np.allclose(curve[1:], 1.0)


@pytest.mark.parametrize(
    ("rec_shape", "ref_shape"), [((64, 64), (64, 60)), ((2, 64, 64), (2, 64, 64))]
)
def test_bad_shapes_raise(rec_shape, ref_shape) -> None:
    with pytest.raises(DataError, match="reconstruction|shape"):
        evaluate(np.ones(rec_shape, complex), np.ones(ref_shape, complex))


def test_non_finite_and_bad_box_raise(obj: np.ndarray) -> None:
    bad = obj.copy()
    bad[3, 4] = np.nan
    with pytest.raises(DataError, match="reconstruction.*non-finite"):
        evaluate(bad, obj)
    with pytest.raises(DataError, match="crop_box"):
        evaluate(obj, obj, crop_box=(0, 200, 0, 10))


def test_scanned_region_is_central_support_clipped() -> None:
    positions = np.array([[20.0, 20.0], [40.0, 30.0], [30.0, 25.0]])
    assert scanned_region(positions, 16, (64, 64)) == (16, 44, 16, 34)
    assert scanned_region(positions, 16, (64, 64), support_fraction=1.0) == (12, 48, 12, 38)
    assert scanned_region(positions, 200, (64, 64)) == (0, 64, 0, 64)
    with pytest.raises(DataError, match="positions_px"):
        scanned_region(np.zeros((3,)), 16, (64, 64))


def test_align_register_false_keeps_grid(obj: np.ndarray) -> None:
    rec, ref, info = align(obj * np.exp(0.3j), obj, crop_box=BOX, register=False)
    assert rec.shape == ref.shape == (96, 96) and info["registration_shift_px"] == (0.0, 0.0)
    assert np.allclose(rec, ref)


def test_comparison_figure_is_png(obj: np.ndarray, tmp_path) -> None:
    result = compare(noisy(obj, 0.05), obj, crop_box=BOX, pixel_size_m=1e-8)
    path = tmp_path / "out" / "comparison.png"
    write_comparison_figure(
        path, result.aligned_reconstruction, result.aligned_reference, result.metrics
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["comparison.png"]


@pytest.mark.parametrize("shift", [(0.0, 0.0), (1.3, -0.6), (-2.0, 1.5)])
def test_smooth_noisy_object_registers(shift: tuple[float, float]) -> None:
    """A smooth, weak object (a Gaussian random field) with noise: its neighbour products are
    nearly constant and their correlation locks onto noise; the correlation of the complex
    objects finds the shift and no shift at all is kept when none is there."""
    np_rng = np.random.default_rng(3)
    field = [ndimage.gaussian_filter(np_rng.normal(size=(SIZE, SIZE)), 6) for _ in range(2)]
    amp = 0.5 + 0.5 * (field[0] - field[0].min()) / np.ptp(field[0])
    phase = 0.8 * (field[1] - field[1].min()) / np.ptp(field[1]) - 0.4
    truth = amp * np.exp(1j * phase)
    rec = noisy(fourier_shift(truth, shift), 0.03, seed=4) * np.exp(
        1j * (0.7 + 0.02 * np.arange(SIZE))
    )
    m = evaluate(rec, truth, crop_box=BOX)
    assert m.registration_shift_px == pytest.approx((-shift[0], -shift[1]), abs=0.15)
    unregistered = evaluate(fourier_shift(rec, (-shift[0], -shift[1])), truth, crop_box=BOX)
    assert m.phase_ssim > unregistered.phase_ssim - 0.02 and m.phase_ssim > 0.45


def test_blurred_noisy_reconstruction_registers(obj: np.ndarray) -> None:
    """A blurred, noisy reconstruction (what a network alone gives) is registered at its true
    shift, not pulled towards zero by the whitened spectrum of phase correlation."""
    rec = noisy(fourier_shift(obj, (0.7, -1.2)), 0.1, blur=2.0) * np.exp(0.5j)
    m = evaluate(rec, obj, crop_box=BOX)
    assert m.registration_shift_px == pytest.approx((-0.7, 1.2), abs=0.15)
