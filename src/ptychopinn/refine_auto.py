"""Refinement that decides its own length: held-out patterns, so it cannot fit the noise.

:func:`refine_auto` holds out a share of the patterns, refines a twin of the object on the
others in lockstep with the object refined on all of them (:mod:`ptychopinn.refinement`'s
``_Refiner``, the same schedule and shuffles), and keeps the all-pattern object of the pass
after which the held-out patterns were most likely — the start itself when no pass made them
significantly more likely than the start did.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from ptychopinn.data.dataset import Normalization
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import object_nll
from ptychopinn.reconstruction import Reconstruction, RefinementRecord

# the machinery of one refinement (package-internal)
from ptychopinn.refinement import (
    RefineOptions,
    RefineTrace,
    _log_done,
    _log_progress,
    _position_fields,
    _Problem,
    _problem,
    _Refiner,
    _result,
)
from ptychopinn.start import smooth_fill

logger = logging.getLogger(__name__)


def refine_auto(
    scan: ScanData,
    probe: torch.Tensor,
    normalization: Normalization,
    start: Reconstruction | None = None,
    options: RefineOptions | None = None,
    device: torch.device | str = "cpu",
) -> tuple[Reconstruction, torch.Tensor, RefineTrace]:
    """Refine for as many passes as the data support: a stopping rule that cannot fit the noise.

    ``held_out_fraction`` of the patterns (drawn with ``seed``) are held out from a twin of
    the object, refined on the other patterns in lockstep with the object refined on all of
    them (the same schedule and shuffles). After each pass the held-out patterns' Poisson
    likelihood under the twin is measured. ``patience`` passes after the last improvement
    (not before ``min_passes``), if the step sizes are still large, both objects' steps
    anneal to their final size over ``patience`` more passes (a plateau at large steps is
    Adam's step noise, not the data's limit); then, or after ``n_iter``, refinement stops
    and returns the all-pattern object of the best pass, if that pass makes the held-out
    patterns significantly more likely than the start does: the mean of the per-pattern
    differences of the negative log-likelihood must lie below zero by more than
    :data:`SIGNIFICANCE` standard errors. Otherwise the start is returned unchanged
    (``passes = 0``): the default output is never a fit of the noise that the data do not
    support. It costs twice the passes it runs.
    """
    opts = options or RefineOptions(n_iter=100)
    problem = _problem(scan, probe, normalization, start, opts, device)
    k = problem.measured.shape[0]
    fit, held = _split(k, opts.held_out_fraction, opts.seed, device)
    twin = _Refiner(problem, probe, opts, str(device), movable=fit)
    full = _Refiner(problem, probe, opts, str(device))
    trace = RefineTrace()
    start_nll = _start_nll(problem, held, start, twin.probe, device)  # (n_held,)
    best_nll, best_pass, best = start_nll, 0, None
    generator = torch.Generator().manual_seed(opts.seed)
    t0 = time.perf_counter()
    reason = f"stopped at the limit of {opts.n_iter} passes"
    annealed_at: int | None = None  # the pass after which the steps were annealed to the end
    for it in range(opts.n_iter):
        twin.begin_pass(it)
        full.begin_pass(it)
        order = torch.randperm(k, generator=generator).to(device)
        twin.run_pass(problem, order[torch.isin(order, fit)])  # the same shuffle, fit set only
        twin.fit_positions(problem, held)  # with --refine_positions: theirs are wrong too
        loss, r = full.run_pass(problem, order)
        trace.loss.append(loss)
        trace.r_factor.append(r)
        held_nll = twin.nll(problem, held)
        trace.held_out.append(float(held_nll.mean()))
        trace.elapsed_s.append(time.perf_counter() - t0)
        _log_progress(trace, it, opts.n_iter)
        if trace.held_out[-1] < float(best_nll.mean()):
            best_nll, best_pass, best = held_nll, it + 1, full.snapshot()
        stop, annealed_at = _stop_or_anneal(it, best_pass, annealed_at, opts, (twin, full))
        if stop is not None:
            reason = stop
            break
    _log_done(trace, k)
    gain, error = _paired_gain(start_nll, best_nll)
    if best is None:
        reason = f"no pass made the held-out patterns more likely than the start ({reason})"
    elif gain <= SIGNIFICANCE * error:
        reason = (
            f"no pass made the held-out patterns significantly more likely than the start "
            f"(best: pass {best_pass}, NLL lower by {gain:.3g} +- {error:.3g} per pattern; "
            f"{reason})"
        )
        best_pass, best = 0, None
    logger.info(
        "refine auto: kept pass %d of %d (%s); held-out NLL per pattern %.6g -> %.6g",
        best_pass, len(trace.held_out), reason, float(start_nll.mean()), float(best_nll.mean()),
    )  # fmt: skip
    record = RefinementRecord(
        requested="auto",
        passes=best_pass,
        stop_reason=reason,
        start="network" if start is not None else "flat",
        seconds=trace.elapsed_s[-1] if trace.elapsed_s else 0.0,
        network_nll=float(start_nll.mean()),
        final_nll=float((best_nll if best is not None else start_nll).mean()),
        held_out_fraction=opts.held_out_fraction,
        probe_refined=opts.probe_lr > 0,
        r_factor=trace.r_factor[best_pass - 1] if best_pass > 0 else None,
        **_position_fields(best["correction"] if best is not None else None),
    )
    if best is None:
        if start is not None:
            return start.replace(refinement=record), probe, trace
        best = {"object": torch.from_numpy(problem.canvas0).to(device), "probe": probe}
    rec = _result(best["object"], problem, start, best["probe"], record, best.get("correction"))
    return rec, best["probe"], trace


def _stop_or_anneal(
    it: int,
    best_pass: int,
    annealed_at: int | None,
    opts: RefineOptions,
    refiners: tuple[_Refiner, ...],
) -> tuple[str | None, int | None]:
    """After pass ``it``: why to stop (None: go on), and the pass the final annealing began.

    ``patience`` passes without a better held-out likelihood (not before ``min_passes``) stop
    refinement if the steps are already small; while they are large, such a plateau is
    Adam's step noise, not the data's limit, so the steps anneal to their final size over
    ``patience`` more passes first.
    """
    done = it + 1
    if annealed_at is not None:
        if done < annealed_at + opts.patience:
            return None, annealed_at
        return (
            f"held-out likelihood not better for {opts.patience} passes at pass "
            f"{annealed_at}; step sizes annealed over {opts.patience} more"
        ), annealed_at
    if done - best_pass < opts.patience or done < opts.min_passes:
        return None, None
    if refiners[-1].factor <= 2 * opts.final_lr_fraction:  # the steps are already small
        return f"held-out likelihood not better for {opts.patience} passes", None
    for refiner in refiners:
        refiner.anneal_now(done, opts.patience)
    return None, done


#: Standard errors by which the held-out likelihood must improve on the start's for
#: ``refine_auto`` to keep a refined object (a one-sided test at about 2 %).
SIGNIFICANCE = 2.0


def _paired_gain(start: torch.Tensor, best: torch.Tensor) -> tuple[float, float]:
    """Mean per-pattern NLL decrease from ``start`` to ``best``, and its standard error."""
    diff = (start - best).double()
    n = max(int(diff.numel()), 1)
    error = float(diff.std()) / math.sqrt(n) if n > 1 else float("inf")
    return float(diff.mean()), error


def _split(
    k: int, fraction: float, seed: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit, held-out) pattern indices: ``fraction`` of ``k`` held out, at least one."""
    rng = np.random.default_rng([seed, k])
    n_held = min(max(1, int(round(k * fraction))), k - 1)
    held = np.sort(rng.choice(k, size=n_held, replace=False))
    fit = np.setdiff1d(np.arange(k), held)
    return torch.from_numpy(fit).to(device), torch.from_numpy(held).to(device)


def _start_nll(
    problem: _Problem,
    held: torch.Tensor,
    start: Reconstruction | None,
    probe: torch.Tensor,
    device: torch.device | str,
) -> torch.Tensor:
    """(n_held,) NLL of the held-out patterns under the start as it would be returned."""
    if start is None:
        obj = problem.canvas0
    else:
        p = problem.pad
        covered = np.pad(start.coverage > 0, p)
        obj = smooth_fill(np.pad(start.object, p), covered, problem.measured.shape[-1] / 16)
    with torch.no_grad():
        return object_nll(
            torch.from_numpy(obj).to(device),
            problem.pos[held],
            probe,
            problem.measured[held],
            problem.scale,
            per_pattern=True,
            mask=problem.mask,
            background=problem.background,
        )
