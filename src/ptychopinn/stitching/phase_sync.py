"""Phase synchronisation: each patch's free constant phase, chosen so that overlaps agree.

A single pattern does not determine the constant phase of its object patch, so a network
that sees one pattern at a time predicts each patch up to one arbitrary phase;
:func:`synchronize_phases` finds the offsets that make overlapping patches agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ptychopinn.physics.functional import shift

#: Two patches are compared in :func:`synchronize_phases` when their weighted overlap is at
#: least this fraction of a patch's own (sum of w(i) w(i - d) >= PAIR_FRACTION * sum of w**2).
PAIR_FRACTION = 1e-2
#: Pairs of patches whose overlaps are computed at once (small: the gather stays in cache).
_PAIR_BATCH = 256
#: Connected parts up to this many patches get a dense eigensolver in :func:`_spectral_phases`.
_DENSE_EIGEN = 256


def _overlapping_pairs(start: np.ndarray, weights: Tensor, min_fraction: float) -> np.ndarray:
    """Pairs (E, 2) of patches, first index lower, whose weighted frames overlap.

    A pair is kept when ``sum_i w(i) w(i - d)`` at the offset ``d`` between their frames is
    at least ``min_fraction`` of ``sum_i w(i)**2``.
    """
    from scipy.signal import correlate
    from scipy.spatial import cKDTree

    n = weights.shape[-1]
    w = weights.double().numpy()
    auto = correlate(w, w, mode="full", method="fft")  # (2n - 1, 2n - 1), centre: sum w**2
    pairs = cKDTree(start).query_pairs(n - 1, p=np.inf, output_type="ndarray").reshape(-1, 2)
    d = start[pairs[:, 1]] - start[pairs[:, 0]] + n - 1
    return pairs[auto[d[:, 0], d[:, 1]] >= min_fraction * auto[n - 1, n - 1]]


def _pair_overlaps(weighted: Tensor, start: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """``C_ij = sum conj(w P_i) w P_j`` over the common pixels of each pair (E,) complex128.

    Rotating patch i by ``a_i`` and j by ``a_j`` turns ``C_ij`` into
    ``exp(1j * (a_j - a_i)) * C_ij``: the pair agrees when that is real and positive.
    """
    k, n = weighted.shape[0], weighted.shape[-1]
    m = 3 * n  # patch j inside a frame of zeros: its overlap with i is one flat gather
    ar = torch.arange(n)
    frame = (ar[:, None] * m + ar[None, :]).reshape(-1)  # (n * n,)
    conj = weighted.reshape(k, -1).conj().resolve_conj()  # a lazy conj would be redone per batch
    padded = torch.zeros(_PAIR_BATCH, m, m, dtype=weighted.dtype)
    out = np.empty(len(pairs), dtype=np.complex128)
    for b in range(0, len(pairs), _PAIR_BATCH):
        i, j = pairs[b : b + _PAIR_BATCH, 0], pairs[b : b + _PAIR_BATCH, 1]
        e = len(i)
        padded[:e, n : 2 * n, n : 2 * n] = weighted[torch.from_numpy(j)]
        d = start[j] - start[i]  # pixel r of i's frame is pixel r - d of j's
        first = torch.from_numpy(np.arange(e) * m * m + (n - d[:, 0]) * m + (n - d[:, 1]))
        other = padded.reshape(-1)[first[:, None] + frame]  # (e, n * n)
        out[b : b + e] = (conj[torch.from_numpy(i)] * other).sum(dim=-1).numpy()
    return out


def _symmetric(pairs: np.ndarray, values: np.ndarray, size: int) -> Any:
    """Sparse (size, size) CSR matrix with ``values`` at ``pairs`` and their conjugates mirrored."""
    from scipy.sparse import coo_matrix

    rows, cols = pairs[:, 0], pairs[:, 1]
    return coo_matrix(
        (
            np.concatenate([values, np.conj(values)]),
            (np.concatenate([rows, cols]), np.concatenate([cols, rows])),
        ),
        shape=(size, size),
    ).tocsr()


def _spectral_phases(pairs: np.ndarray, overlap: np.ndarray, size: int) -> np.ndarray:
    """Initial phase offsets (size,) from the leading eigenvector of the overlap matrix.

    The phases that make every rotated overlap ``exp(1j * (a_j - a_i)) * C_ij`` real and
    positive maximise ``z^H C z`` over unit ``z_i = exp(1j * a_i)``; relaxed to any ``z``
    this is the leading eigenvector of the Hermitian matrix ``C`` (degree-normalised), a
    start that weighs all pairs at once and so does not depend on a path through the scan
    (angular synchronisation, Singer 2011). Each connected part is solved on its own; the
    last node (the fixed canvas) is the reference of its part.
    """
    from scipy.sparse import diags
    from scipy.sparse.csgraph import connected_components
    from scipy.sparse.linalg import eigsh

    matrix = _symmetric(pairs, overlap, size)
    degree = np.asarray(abs(matrix).sum(axis=1)).ravel()
    scale = 1.0 / np.sqrt(np.maximum(degree, 1e-300))
    normalised = (diags(scale) @ matrix @ diags(scale)).tocsr()
    _, labels = connected_components(abs(matrix), directed=False)
    phase = np.zeros(size)
    for label in np.unique(labels):
        nodes = np.flatnonzero(labels == label)
        if nodes.size < 2:
            continue
        part = normalised[nodes][:, nodes]
        if nodes.size <= _DENSE_EIGEN:
            vector = np.linalg.eigh(part.toarray())[1][:, -1]
        else:  # a fixed start vector keeps the result reproducible
            start = np.ones(nodes.size, dtype=complex)
            vector = eigsh(part, k=1, which="LA", v0=start, tol=1e-6)[1][:, 0]
        phase[nodes] = np.angle(vector * scale[nodes])
        phase[nodes] -= phase[nodes[-1]]  # the canvas, where the part reaches it
    return phase


def _least_squares_phases(
    pairs: np.ndarray, overlap: np.ndarray, phase: np.ndarray, n_iter: int, tol_rad: float
) -> np.ndarray:
    """Gauss-Newton steps from ``phase`` on the least squares of :func:`synchronize_phases`.

    The last node (the fixed canvas) keeps its phase. The normal matrix, a graph Laplacian
    weighted by ``|C_ij|``, does not change between steps: it is factorised once.
    """
    from scipy.sparse import diags
    from scipy.sparse.linalg import factorized

    size = phase.shape[0]
    i, j = pairs[:, 0], pairs[:, 1]
    strength = np.abs(overlap)
    degree = np.bincount(i, strength, minlength=size) + np.bincount(j, strength, minlength=size)
    laplacian = (diags(degree) - _symmetric(pairs, strength, size))[:-1, :-1]
    # a tiny diagonal fixes the common phase of parts that the canvas does not reach
    gauge = 1e-9 * max(float(degree.max(initial=0.0)), 1e-30)
    solve = factorized((laplacian + diags(np.full(size - 1, gauge))).tocsc())
    phase = phase.copy()
    for _ in range(n_iter):
        mismatch = strength * np.angle(np.exp(1j * (phase[j] - phase[i])) * overlap)  # (E,)
        rhs = np.bincount(i, mismatch, minlength=size) - np.bincount(j, mismatch, minlength=size)
        step = solve(rhs[:-1])
        phase[:-1] += step
        if float(np.abs(step).max(initial=0.0)) < tol_rad:
            break
    return phase


def synchronize_phases(
    patches: Tensor,
    positions_px: np.ndarray,
    weights: Tensor,
    n_iter: int = 10,
    tol_rad: float = 1e-4,
    background: Tensor | None = None,
) -> Tensor:
    """Remove each patch's arbitrary global phase so overlapping patches agree.

    The far-field amplitude of a single pattern does not see a constant phase
    factor on its object patch, so a network's patches carry one arbitrary phase
    each; averaging them unsynchronised destroys the low spatial frequencies of
    the phase. The offsets ``a`` minimise the weighted least-squares mismatch over every
    pair of overlapping patches (integer-pixel overlaps suffice for the offsets),

        sum_ij |C_ij| (a_j - a_i + angle C_ij)**2,   C_ij = sum conj(w P_i) w P_j,

    solved exactly (one sparse factorisation) and relinearised for up to ``n_iter``
    Gauss-Newton steps, stopping once no offset changes by more than ``tol_rad``. They start
    from the leading eigenvector of the overlap matrix (:func:`_spectral_phases`), which
    weighs all pairs at once, so the least squares start near their global optimum rather
    than in a local one that a path through the scan can leave. Each patch is compared with
    every patch its weights overlap (:data:`PAIR_FRACTION`), not only its nearest
    neighbours: the errors of a network's patches (wrong local phase gradients, curvature)
    then average out instead of accumulating into a large-scale phase error, as they do
    along a chain of neighbours or with a few rounds of aligning each patch to the others
    (an iteration that needs about as many rounds as the scan is patches wide, squared, to
    settle the largest scales). Only the part of the window where ``weights`` are non-zero
    is compared.

    ``background`` holds, for each patch, the weighted sum of patches stitched before (see
    :meth:`Stitcher.weighted_sum_at`), which stays fixed: the canvas is one more node of the
    pairs, with phase 0 and each patch's overlap with it as ``C``. This lets a scan be
    synchronised chunk by chunk.

    Shapes
    ------
    patches : (K, N, N) complex
    positions_px : (K, 2) (y, x)
    weights : (N, N)
    background : (K, N, N) complex, optional
    returns (K, N, N) complex, each patch times a unit phase factor
    """
    k = patches.shape[0]
    if k == 0 or (k < 2 and background is None):
        return patches
    original = patches.to(torch.complex64)
    weights = weights.to(torch.float32)
    positions_px = np.asarray(positions_px, dtype=np.float64)
    start = np.round(positions_px).astype(np.int64)  # (K, 2): the integer frame of each patch
    # resample each patch onto the integer grid of its window so overlaps compare like with like
    residual = torch.from_numpy(positions_px - np.round(positions_px)).to(torch.float32)
    patches = shift(original, residual) if bool(torch.any(residual != 0)) else original
    # only where the weights are non-zero do patches meet (the support within the window)
    rows, cols = (torch.nonzero(weights.sum(dim=axis) > 0).ravel() for axis in (1, 0))
    inside = (slice(None), slice(None))
    if rows.numel():
        inside = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
    weights = weights[inside]
    weighted = patches[(..., *inside)] * weights  # (K, n, n), n <= N
    pairs = _overlapping_pairs(start, weights, PAIR_FRACTION)
    overlap = _pair_overlaps(weighted, start, pairs)
    if background is not None:  # the canvas is node k: C_ik, the overlap of patch i with it
        background = background.to(device=patches.device, dtype=torch.complex64)[(..., *inside)]
        anchor = (weighted.conj() * background).sum(dim=(-2, -1)).to(torch.complex128).numpy()
        linked = np.flatnonzero(anchor != 0)
        pairs = np.concatenate([pairs, np.stack([linked, np.full(linked.size, k)], axis=1)])
        overlap = np.concatenate([overlap, anchor[linked]])
    phase = _spectral_phases(pairs, overlap, k + 1)
    phase = _least_squares_phases(pairs, overlap, phase, n_iter, tol_rad)[:k]
    rotation = torch.from_numpy(np.exp(1j * phase)).to(torch.complex64)
    return original * rotation[:, None, None]
