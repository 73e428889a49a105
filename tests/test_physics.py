"""Properties of the forward model, stated once and checked on random data."""

from __future__ import annotations

import math

import pytest
import torch

from ptychopinn.physics import functional as pf
from ptychopinn.physics.forward import ForwardModel


def _complex(
    rng: torch.Generator, *shape: int, dtype: torch.dtype = torch.complex64
) -> torch.Tensor:
    real_dtype = torch.float64 if dtype == torch.complex128 else torch.float32
    return torch.complex(
        torch.randn(*shape, generator=rng, dtype=real_dtype),
        torch.randn(*shape, generator=rng, dtype=real_dtype),
    )


def test_parseval(rng):
    x = _complex(rng, 3, 32, 32)
    assert torch.allclose(pf.fft2c(x).abs().square().sum(), x.abs().square().sum(), rtol=1e-5)


def test_fft_dc_at_centre():
    x = torch.ones(16, 16, dtype=torch.complex64)
    f = pf.fft2c(x).abs()
    assert torch.argmax(f).item() == 8 * 16 + 8


@pytest.mark.parametrize("t", [(0.3, -1.7), (2.0, 5.0), (-0.5, 0.5), (7.25, -3.125)])
def test_shift_then_unshift_is_identity(rng, t):
    img = _complex(rng, 2, 24, 32)
    tt = torch.tensor(t)
    assert torch.allclose(pf.shift(pf.shift(img, tt), -tt), img, atol=1e-5)
    real = torch.randn(24, 24, generator=rng)
    out = pf.shift(real, tt)
    assert not out.is_complex()
    assert torch.allclose(pf.shift(out, -tt), real, atol=1e-5)


def test_shift_direction_moves_content_by_plus_t():
    img = torch.zeros(16, 16)
    img[4, 6] = 1.0
    out = pf.shift(img, torch.tensor([3.0, -2.0]))
    assert torch.nonzero(out.abs() > 0.5).tolist() == [[7, 4]]


def test_shift_is_unitary(rng):
    img = _complex(rng, 20, 20)
    out = pf.shift(img, torch.tensor([0.37, 1.61]))
    assert torch.allclose(out.abs().square().sum(), img.abs().square().sum(), rtol=1e-5)


def test_extract_then_merge_is_identity_under_full_coverage(rng):
    obj = _complex(rng, 1, 48, 48)
    grid = torch.arange(8, 41, 4, dtype=torch.float64)
    pos = torch.cartesian_prod(grid, grid)[None]  # (1, K, 2)
    patches = pf.extract_patches(obj, pos, 16)
    merged, weight = pf.merge_patches(patches, pos, (48, 48))
    covered = weight > 0
    assert covered[0, 8:40, 8:40].all()
    assert torch.allclose(merged[covered], obj[covered], atol=1e-5)


def test_merge_single_patch_then_extract_returns_it(rng):
    patch = _complex(rng, 1, 1, 16, 16)
    pos = torch.tensor([[[20.3, 17.8]]], dtype=torch.float64)
    canvas = pf.scatter_patches(patch, pos, (40, 40))
    assert torch.allclose(pf.extract_patches(canvas, pos, 16), patch, atol=1e-5)


def test_scatter_is_adjoint_of_extract(rng):
    canvas = _complex(rng, 2, 40, 40, dtype=torch.complex128)
    patches = _complex(rng, 2, 3, 16, 16, dtype=torch.complex128)
    pos = 12 + 16 * torch.rand(2, 3, 2, generator=rng, dtype=torch.float64)
    lhs = torch.vdot(pf.extract_patches(canvas, pos, 16).flatten(), patches.flatten())
    rhs = torch.vdot(canvas.flatten(), pf.scatter_patches(patches, pos, (40, 40)).flatten())
    assert torch.allclose(lhs, rhs, rtol=1e-9)


def test_extract_orientation_bright_pixel():
    canvas = torch.zeros(1, 32, 32)
    canvas[0, 10, 18] = 1.0
    patch = pf.extract_patches(canvas, torch.tensor([[[12.0, 16.0]]]), 8)[0, 0]
    # object pixel (10, 18) sits at patch index (10 - 12 + 8 // 2, 18 - 16 + 8 // 2)
    assert torch.nonzero(patch).tolist() == [[2, 6]]


def test_gridsize2_single_bright_pixel_orientation():
    """A bright pixel in one patch of a 2x2 group lands where its offset says, in every neighbour."""
    n = 16
    support = torch.ones(n, n)
    probe = torch.ones(1, n, n, dtype=torch.complex64)
    fm = ForwardModel(probe, support)
    offsets = torch.tensor(
        [[[-2.0, -2.0], [-2.0, 2.0], [2.0, -2.0], [2.0, 2.0]]]
    )  # (1, 4, 2) (y, x)
    patches = torch.zeros(1, 4, n, n, dtype=torch.complex64)
    # bright object pixel at patch index (8, 8) of the top-left member (offset (-2, -2)),
    # i.e. at group coordinate (-2, -2) relative to the centre... and nowhere else.
    patches[0, 0, 8, 8] = 4.0  # overlap-normalised: 4 members cover this pixel
    merged = fm.merge_group(patches, offsets)
    # Group coordinate of the pixel: offset(-2,-2) + (8 - n//2, 8 - n//2) = (-2, -2).
    # In member k it must sit at index (-2, -2) - offset_k + n//2.
    for k, off in enumerate(offsets[0]):
        expected = (int(-2 - off[0] + n // 2), int(-2 - off[1] + n // 2))
        nz = torch.nonzero(merged[0, k].abs() > 1e-3).tolist()
        assert nz == [list(expected)], (k, nz, expected)


@pytest.mark.parametrize("kind", ["probe", "support"])
def test_group_merge_weighs_each_patch_by_the_probe_amplitude(kind):
    """Two members of a group, two scan steps apart, each a constant patch: where they overlap,
    the shared object is their average weighted by the probe amplitude |P| at each one's own
    pixel (``merge_weights="probe"``) or their plain average (``"support"``)."""
    n = 16
    yy, xx = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    amplitude = torch.exp(-((yy + 1.0) ** 2 + (xx - 2.0) ** 2) / 18.0)  # off-centre, uneven
    probe = torch.polar(amplitude, 0.1 * xx.float())[None]  # (1, n, n)
    fm = ForwardModel(probe, torch.ones(n, n), merge_weights=kind)
    offsets = torch.tensor([[[0.0, -3.0], [0.0, 3.0]]])  # (1, 2, 2) (y, x)
    values = torch.tensor([1.0 + 0.0j, -1.0 + 2.0j])
    patches = values[None, :, None, None].expand(1, 2, n, n).clone()
    merged = fm.merge_group(patches, offsets)  # (1, 2, n, n)
    row, col = n // 2 + 1, n // 2  # member 0's pixel at group coordinate (1, -3), both cover it
    w0 = float(amplitude[row, col]) if kind == "probe" else 1.0
    w1 = float(amplitude[row, col - 6]) if kind == "probe" else 1.0  # member 1's index for it
    expected = (w0 * values[0] + w1 * values[1]) / (w0 + w1)
    assert complex(merged[0, 0, row, col]) == pytest.approx(complex(expected), abs=1e-4)
    assert complex(merged[0, 1, row, col - 6]) == pytest.approx(complex(expected), abs=1e-4)


def test_group_merge_weights_follow_a_probe_loaded_after_construction():
    """A module built with a zero probe (as when restored from a checkpoint) merges by the
    probe it is given afterwards, not by the zero one it was built with."""
    n = 16
    probe = torch.ones(1, n, n, dtype=torch.complex64)
    probe[..., : n // 2] = 0.25  # the left half weighs a quarter
    built = ForwardModel(probe, torch.ones(n, n), merge_weights="probe")
    restored = ForwardModel(torch.zeros_like(probe), torch.ones(n, n), merge_weights="probe")
    restored.load_state_dict(built.state_dict())
    patches = torch.randn(1, 2, n, n, dtype=torch.complex64)
    offsets = torch.tensor([[[0.0, -2.0], [0.0, 2.0]]])
    flat = ForwardModel(probe, torch.ones(n, n), merge_weights="support")
    torch.testing.assert_close(
        restored.merge_group(patches, offsets), built.merge_group(patches, offsets)
    )
    assert not torch.allclose(
        flat.merge_group(patches, offsets), built.merge_group(patches, offsets)
    )


def test_forward_invariant_to_global_phase(rng):
    probe = _complex(rng, 2, 16, 16)
    patches = _complex(rng, 3, 1, 16, 16)
    fm = ForwardModel(probe, torch.ones(16, 16))
    a = fm(patches)
    b = fm(patches * torch.polar(torch.tensor(1.0), torch.tensor(0.9)))
    assert torch.allclose(a, b, atol=1e-4)


def test_incoherent_modes_add_intensities(rng):
    probe = _complex(rng, 2, 16, 16)
    patch = _complex(rng, 16, 16)
    both = pf.far_field_amplitude(probe, patch) ** 2
    single = sum(pf.far_field_amplitude(probe[i : i + 1], patch) ** 2 for i in range(2))
    assert torch.allclose(both, single, rtol=1e-4)


def test_poisson_gradient_vanishes_at_the_data(rng):
    measured = torch.rand(4, 16, 16, generator=rng, dtype=torch.float64) + 0.5
    predicted = measured.clone().requires_grad_(True)
    pf.poisson_nll(predicted, measured, scale=10.0, eps=0.0).backward()
    assert predicted.grad.abs().max() < 1e-10
    # and it is a minimum: perturbing raises the loss
    worse = pf.poisson_nll(measured * 1.05, measured, 10.0, 0.0)
    assert worse > pf.poisson_nll(measured, measured, 10.0, 0.0)


def test_intensity_scale_and_probe_normalisation():
    assert pf.intensity_scale(1e4, 64) == pytest.approx(100 / 32)
    probe = torch.ones(2, 32, 32, dtype=torch.complex64) * 3
    assert pf.normalize_probe(probe).abs().square().sum().item() == pytest.approx(256.0, rel=1e-5)


def test_gradcheck_forward_chain():
    rng = torch.Generator().manual_seed(1)
    probe = _complex(rng, 1, 8, 8, dtype=torch.complex128)
    canvas = _complex(rng, 1, 20, 20, dtype=torch.complex128).requires_grad_(True)
    pos = torch.tensor([[[9.3, 10.6], [10.8, 9.2]]], dtype=torch.float64)

    def f(c):
        patches = pf.extract_patches(c, pos, 8)
        return pf.far_field_amplitude(probe, patches)

    assert torch.autograd.gradcheck(f, (canvas,), eps=1e-6, atol=1e-5)


def test_gradcheck_merge():
    rng = torch.Generator().manual_seed(2)
    patches = _complex(rng, 1, 2, 8, 8, dtype=torch.complex128).requires_grad_(True)
    pos = torch.tensor([[[9.3, 10.6], [10.8, 9.2]]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda p: pf.merge_patches(p, pos, (20, 20))[0], (patches,), eps=1e-6, atol=1e-5
    )


def test_disk_mask_diameter():
    mask = pf.disk_mask(64, 32)
    assert mask.sum().item() == pytest.approx(math.pi * 16**2, rel=0.05)
