"""Pure, differentiable tensor functions of the ptychographic forward model.

Conventions
-----------
* Arrays are indexed ``[..., row, column]``; positions and shifts are ``(y, x)``
  = ``(row, column)`` pairs in pixels.
* Far field: ``F = fftshift(fft2(psi, norm="ortho"))`` (DC at ``N // 2``).
* Sub-pixel translation is a Fourier shift: ``shift(img, t)`` moves content by
  ``+t`` with a linear phase ramp (periodic boundary). The ramp is zero at the
  Nyquist frequency of even sizes, so real images stay real and ``shift(t)``
  followed by ``shift(-t)`` is exactly the identity for every ``t``.
* A patch of size N centred at position ``p`` holds object pixel
  ``p - N // 2 + i`` at patch index ``i``. :func:`extract_patches` cuts patches
  from a canvas; :func:`merge_patches` is its adjoint followed by an
  overlap-weighted normalisation, so extraction then merging at the same
  positions is the identity wherever the canvas is covered, and merging a single
  patch then extracting it at the same position returns the patch exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: Extra pixels cut around each patch so the sub-pixel Fourier shift has room.
SHIFT_MARGIN_PX = 4


def fft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2-D FFT over the last two axes.

    >>> x = torch.zeros(4, 4, dtype=torch.complex64); x[0, 0] = 1
    >>> float(fft2c(x).abs().sum())
    4.0
    """
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(x: Tensor) -> Tensor:
    """Inverse of :func:`fft2c`.

    >>> x = torch.randn(8, 8, dtype=torch.complex64)
    >>> bool(torch.allclose(ifft2c(fft2c(x)), x, atol=1e-6))
    True
    """
    return torch.fft.ifft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho")


def _frequencies(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    f = torch.fft.fftfreq(n, device=device, dtype=dtype)
    if n % 2 == 0:
        f[n // 2] = 0.0  # Nyquist: no ramp, keeps real images real and shift unitary
    return f


def shift(img: Tensor, t: Tensor) -> Tensor:
    """Translate images by ``t`` pixels (content moves by ``+t``), Fourier method.

    Parameters
    ----------
    img : real or complex tensor (..., H, W)
    t : tensor (..., 2) of (dy, dx) broadcastable against ``img.shape[:-2]``

    Shapes
    ------
    returns (..., H, W), same dtype as ``img``

    >>> img = torch.zeros(5, 5); img[2, 2] = 1
    >>> out = shift(img, torch.tensor([1.0, -2.0]))
    >>> [int(i) for i in torch.nonzero(out.abs() > 0.5)[0]]
    [3, 0]
    """
    real = not img.is_complex()
    h, w = img.shape[-2:]
    real_dtype = img.real.dtype if img.is_complex() else img.dtype
    t = t.to(real_dtype)
    fy = _frequencies(h, img.device, real_dtype)
    fx = _frequencies(w, img.device, real_dtype)
    # the ramp is separable: exp(-2 pi i (ty fy + tx fx)) = ramp_y (..., H, 1) * ramp_x (..., 1, W)
    # (two short polar calls and one complex product instead of a polar over (..., H, W))
    phase_y = -2.0 * math.pi * t[..., 0, None] * fy  # (..., H)
    phase_x = -2.0 * math.pi * t[..., 1, None] * fx  # (..., W)
    ramp_y = torch.polar(torch.ones_like(phase_y), phase_y)[..., :, None]
    ramp_x = torch.polar(torch.ones_like(phase_x), phase_x)[..., None, :]
    out = torch.fft.ifft2(torch.fft.fft2(img) * ramp_y * ramp_x)
    return out.real if real else out.to(img.dtype)


def _windows(positions_px: Tensor, n: int, margin: int) -> tuple[Tensor, Tensor]:
    """Integer window origins (top-left, incl. margin) and residual sub-pixel shifts."""
    nearest = torch.round(positions_px)
    residual = positions_px - nearest  # in [-0.5, 0.5]
    start = nearest.to(torch.long) - (n // 2) - margin
    return start, residual


def _window_index(start: Tensor, size: int) -> tuple[Tensor, Tensor]:
    ar = torch.arange(size, device=start.device)
    rows = start[..., 0, None, None] + ar[:, None]  # (..., size, 1)
    cols = start[..., 1, None, None] + ar[None, :]  # (..., 1, size)
    return rows, cols


def extract_patches(canvas: Tensor, positions_px: Tensor, n: int) -> Tensor:
    """Cut N x N patches centred at sub-pixel positions from canvases.

    Parameters
    ----------
    canvas : (B, H, W) real or complex
    positions_px : (B, K, 2) float, (y, x) on the canvas grid
    n : patch size

    Shapes
    ------
    returns (B, K, n, n)

    Patches must lie on the canvas (``SHIFT_MARGIN_PX`` of slack is zero-padded).

    >>> canvas = torch.arange(100.0).reshape(1, 10, 10)
    >>> extract_patches(canvas, torch.tensor([[[5.0, 5.0]]]), 2)[0, 0]
    tensor([[44., 45.],
            [54., 55.]])
    """
    m = SHIFT_MARGIN_PX
    b = canvas.shape[0]
    padded = torch.nn.functional.pad(canvas.unsqueeze(1), (m, m, m, m)).squeeze(1)
    start, residual = _windows(positions_px, n, m)
    size = n + 2 * m
    rows, cols = _window_index(start + m, size)  # +m: offset into the padded canvas
    h, w = padded.shape[-2:]
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= h or cols.max() >= w:
        raise ValueError(
            f"extract_patches: patches leave the canvas of shape {tuple(canvas.shape[-2:])}"
        )
    bidx = torch.arange(b, device=canvas.device)[:, None, None, None]
    window = padded[bidx, rows, cols]  # (B, K, size, size)
    if positions_px.requires_grad or bool(torch.any(residual != 0)):  # positions refined
        window = shift(window, -residual)
    return window[..., m : m + n, m : m + n]


def scatter_patches(patches: Tensor, positions_px: Tensor, canvas_shape: tuple[int, int]) -> Tensor:
    """Adjoint of :func:`extract_patches`: add patches onto zero canvases.

    Parameters
    ----------
    patches : (B, K, n, n) real or complex
    positions_px : (B, K, 2) float, (y, x)
    canvas_shape : (H, W)

    Shapes
    ------
    returns (B, H, W)
    """
    m = SHIFT_MARGIN_PX
    b, k, n, _ = patches.shape
    start, residual = _windows(positions_px, n, m)
    window = torch.nn.functional.pad(patches, (m, m, m, m))  # (B, K, size, size)
    if bool(torch.any(residual != 0)):
        window = shift(window, residual)
    size = n + 2 * m
    h, w = canvas_shape
    hp, wp = h + 2 * m, w + 2 * m
    rows, cols = _window_index(start + m, size)
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= hp or cols.max() >= wp:
        raise ValueError(f"scatter_patches: patches leave the canvas of shape {canvas_shape}")
    flat_index = (rows * wp + cols).expand(b, k, size, size)  # (B, K, size, size)
    offset = (torch.arange(b, device=patches.device) * hp * wp)[:, None, None, None]
    flat_index = (flat_index + offset).reshape(-1)
    out = torch.zeros(b * hp * wp, dtype=patches.dtype, device=patches.device)
    out = out.index_add(0, flat_index, window.reshape(-1))
    return out.reshape(b, hp, wp)[:, m : m + h, m : m + w]


def merge_patches(
    patches: Tensor,
    positions_px: Tensor,
    canvas_shape: tuple[int, int],
    weights: Tensor | None = None,
    min_weight: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Overlap-weighted average of patches placed at their positions.

    Parameters
    ----------
    patches : (B, K, n, n)
    positions_px : (B, K, 2), (y, x)
    canvas_shape : (H, W)
    weights : (n, n) or (B, K, n, n) non-negative, default ones
    min_weight : pixels whose summed weight is below ``min_weight * max`` are set to 0

    Shapes
    ------
    returns canvas (B, H, W) and summed weight (B, H, W)
    """
    if weights is None:
        weights = torch.ones(patches.shape[-2:], device=patches.device)
    weights = weights.to(patches.real.dtype if patches.is_complex() else patches.dtype)
    weights = weights.expand(patches.shape)
    numerator = scatter_patches(patches * weights, positions_px, canvas_shape)
    denominator = scatter_patches(weights, positions_px, canvas_shape)
    floor = min_weight * denominator.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    covered = denominator > floor
    safe = torch.where(covered, denominator, torch.ones_like(denominator))
    canvas = torch.where(covered, numerator / safe, torch.zeros_like(numerator))
    return canvas, torch.where(covered, denominator, torch.zeros_like(denominator))


def patch_weights(support: Tensor, probe: Tensor, kind: str) -> Tensor:
    """Per-pixel weight (n, n) of a patch when patches are merged: flat, or the probe on it.

    ``"support"``: the support itself. ``"probe"``: the support times the probe amplitude
    ``|P|`` (all modes, normalised to a maximum of 1); ``"intensity"``: times ``|P|**2``. A
    probe that is all zeros (a module built before its state is loaded) gives the support.

    Shapes
    ------
    support : (n, n) 0/1
    probe : (P, n, n) complex
    returns (n, n) float

    >>> probe = torch.ones(1, 4, 4, dtype=torch.complex64); probe[0, 0, 0] = 0.5
    >>> patch_weights(torch.ones(4, 4), probe, "intensity")[0, :2].tolist()
    [0.25, 1.0]
    """
    if kind == "support":
        return support
    intensity = probe.detach().abs().square().sum(0).to(support.dtype)
    peak = intensity.amax()  # stays on the device: training calls this every step
    weight = intensity / peak.clamp_min(torch.finfo(intensity.dtype).tiny)
    return torch.where(peak > 0, support * (weight.sqrt() if kind == "probe" else weight), support)


def illuminate(probe: Tensor, patches: Tensor) -> Tensor:
    """Exit waves of every probe mode.

    Shapes
    ------
    probe : (P, n, n) complex
    patches : (..., n, n) complex
    returns (..., P, n, n)
    """
    return patches.unsqueeze(-3) * probe


def far_field_amplitude(probe: Tensor, patches: Tensor) -> Tensor:
    """Predicted diffraction amplitude, incoherent over probe modes.

    Shapes
    ------
    probe : (P, n, n) complex
    patches : (..., n, n) complex
    returns (..., n, n) real: ``sqrt(sum_modes |fft2c(P_m * O)|**2)``

    >>> probe = torch.ones(1, 4, 4, dtype=torch.complex64)
    >>> obj = torch.ones(4, 4, dtype=torch.complex64)
    >>> float(far_field_amplitude(probe, obj)[2, 2])
    4.0
    """
    intensity = fft2c(illuminate(probe, patches)).abs().square().sum(dim=-3)
    return intensity.clamp_min(1e-12).sqrt()


def intensity_scale(nphotons: float, n: int) -> float:
    """``s = sqrt(nphotons) / (N / 2)``: maps normalised amplitudes to sqrt(counts).

    >>> intensity_scale(1e6, 64)
    31.25
    """
    return math.sqrt(nphotons) / (n / 2)


def normalize_probe(probe: Tensor) -> Tensor:
    """Scale a probe (P, n, n) so the summed intensity of all modes is ``(n / 2)**2``.

    With data normalised to mean sum(X**2) = (n/2)**2, the object amplitude is then
    of order one.

    >>> p = normalize_probe(torch.ones(1, 8, 8, dtype=torch.complex64))
    >>> float(p.abs().square().sum())
    16.0
    """
    n = probe.shape[-1]
    power = probe.abs().square().sum()
    return probe * (n / 2) / torch.sqrt(power)


def disk_mask(n: int, diameter: float, device: torch.device | None = None) -> Tensor:
    """Centred disk of ``diameter`` pixels on an n x n grid (centre at n // 2), float 0/1.

    >>> int(disk_mask(8, 4).sum())
    13
    """
    ar = torch.arange(n, device=device, dtype=torch.float32) - n // 2
    r2 = ar[:, None] ** 2 + ar[None, :] ** 2
    return (r2 <= (diameter / 2) ** 2).to(torch.float32)


def square_support(n: int, side: int, device: torch.device | None = None) -> Tensor:
    """Centred square of ``side`` pixels on an n x n grid, float 0/1.

    >>> int(square_support(8, 4).sum())
    16
    """
    mask = torch.zeros(n, n, device=device)
    lo = n // 2 - side // 2
    mask[lo : lo + side, lo : lo + side] = 1.0
    return mask


def poisson_nll(
    predicted_amplitude: Tensor,
    measured_amplitude: Tensor,
    scale: float,
    eps: float = 1e-6,
    mask: Tensor | None = None,
    per_pattern: bool = False,
) -> Tensor:
    """Poisson negative log-likelihood per pattern (up to the data-only constant).

    With expected counts ``lam = (s * A_hat)**2`` and measured ``k = (s * X)**2``:
    ``sum(lam - k * log(lam + eps))`` over pixels, averaged over the leading axes (or, with
    ``per_pattern``, one value per pattern).

    Shapes
    ------
    predicted_amplitude, measured_amplitude : (..., n, n)
    mask : (n, n) of 0/1 (1 = use pixel), optional
    returns scalar, or (...) with ``per_pattern``
    """
    lam = (scale * predicted_amplitude).square()
    k = (scale * measured_amplitude).square()
    nll = lam - k * torch.log(lam + eps)
    if mask is not None:
        nll = nll * mask
    per = nll.sum(dim=(-2, -1))
    return per if per_pattern else per.mean()


def object_nll(
    obj: Tensor,
    positions_px: Tensor,
    probe: Tensor,
    measured_amplitude: Tensor,
    scale: float,
    per_pattern: bool = False,
    mask: Tensor | None = None,
    background: Tensor | None = None,
) -> Tensor:
    """Poisson negative log-likelihood per pattern of patterns measured on an object canvas.

    The patches at ``positions_px`` are illuminated by ``probe`` and propagated
    (:func:`far_field_amplitude`), then scored with :func:`poisson_nll`.

    Shapes
    ------
    obj : (H, W) complex canvas
    positions_px : (K, 2) (y, x) on the canvas grid
    probe : (P, N, N) complex
    measured_amplitude : (K, N, N)
    mask : (N, N) 0/1, the detector pixels that count (None: all)
    background : (N, N) detector background in normalised intensity units (None: none)
    returns scalar (mean over the K patterns), or (K,) with ``per_pattern``
    """
    n = measured_amplitude.shape[-1]
    predicted = object_amplitudes(obj, positions_px, probe, n, background)
    return poisson_nll(predicted, measured_amplitude, scale, mask=mask, per_pattern=per_pattern)


def object_amplitudes(
    obj: Tensor, positions_px: Tensor, probe: Tensor, n: int, background: Tensor | None = None
) -> Tensor:
    """(K, N, N) predicted far-field amplitudes of the patches of ``obj`` at ``positions_px``
    (with ``background``, see :func:`with_background`)."""
    patches = extract_patches(obj[None], positions_px[None], n)[0]  # (K, N, N)
    return with_background(far_field_amplitude(probe, patches), background)


def with_background(amplitude: Tensor, background: Tensor | None) -> Tensor:
    """``sqrt(amplitude**2 + background)``: a detector background added to the model.

    ``background`` (N, N) is in the units of ``amplitude**2`` (normalised units: counts
    divided by the intensity scale squared); None adds nothing.

    >>> float(with_background(torch.tensor([3.0]), torch.tensor([16.0]))[0])
    5.0
    """
    if background is None:
        return amplitude
    return (amplitude.square() + background).sqrt()


def r_factor(
    predicted_amplitude: Tensor, measured_amplitude: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Amplitude R-factor: sum |predicted - measured| / sum measured, over the counted pixels.

    The normalised data-fit error of ptychography (0 for a perfect fit; at Poisson noise the
    truth itself scores above 0, about 1 / (2 sqrt(counts per pixel)) on bright pixels).

    >>> a = torch.ones(2, 4, 4)
    >>> round(float(r_factor(1.1 * a, a)), 6)
    0.1
    """
    err = (predicted_amplitude - measured_amplitude).abs()
    total = measured_amplitude.abs()
    if mask is not None:
        err, total = err * mask, total * mask
    return err.sum() / total.sum().clamp_min(torch.finfo(total.dtype).tiny)


def amplitude_mae(
    predicted_amplitude: Tensor, measured_amplitude: Tensor, mask: Tensor | None = None
) -> Tensor:
    """Mean absolute error between amplitudes (alternative loss)."""
    err = (predicted_amplitude - measured_amplitude).abs()
    if mask is not None:
        err = err * mask
    return err.mean()
