"""Train once, reconstruct many: what a model was trained on, and adapting it to a new scan.

:func:`training_record` summarises the scan a model trained on (probe, step, counts,
simulated objects) for the bundle's manifest; :func:`compatibility` compares a new scan with
it, so ``infer`` can say when the network alone is outside what it learned.
:func:`adapt` fine-tunes a copy of the network on the new scan itself with the same
self-supervised likelihood as training, for a few seconds, before it predicts
(``ptychopinn infer --adapt S``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any

import numpy as np
import torch

from ptychopinn.bundle import Bundle
from ptychopinn.data.dataset import GroupDataset
from ptychopinn.data.grouping import training_groups
from ptychopinn.errors import ConfigError
from ptychopinn.io.scan import ScanData
from ptychopinn.io.summary import median_spacing_px
from ptychopinn.reconstruction import Reconstruction

logger = logging.getLogger(__name__)

#: Below this similarity of the scan's probe to the training probe, the network alone is
#: outside what it learned (1 = the same intensity profile).
PROBE_SIMILARITY_LIMIT = 0.9
#: A scan step further than this factor from the training step is outside the model's range.
STEP_RATIO_LIMIT = 1.5
#: Adaptation's learning rate as a fraction of the training peak rate (0.3 and 3 did worse).
ADAPT_RATE_FRACTION = 1.0
#: Groups whose likelihood is reported before and after adaptation.
EVAL_GROUPS = 64
#: Optimiser steps ``--adapt auto`` takes on a scan the network does not explain (a count, not
#: a time, so the result does not depend on the machine's load; about 10 s at N = 64 on 2 CPU
#: cores).
AUTO_ADAPT_STEPS = 250
#: ``--adapt auto`` adapts when the network's R-factor on the scan exceeds this multiple of the
#: R-factor it reached on its training data (and is poor against the photon noise's floor).
NOVELTY_RATIO = 1.5
#: ... or when its fit over the noise floor is this many times the one on its training scan.
NOVELTY_FIT_RATIO = 1.3
#: Patterns of the training scan the network's fit is recorded on (those nearest its centre).
FIT_PATTERNS = 1024


def _finite(value: float) -> float:
    """``value``, or 0 where it is not finite (a single position has no step)."""
    return value if math.isfinite(value) else 0.0


def training_record(scan: ScanData, synthetic_objects: int) -> dict[str, Any]:
    """What the model is valid for, as plain data for the bundle's manifest."""
    return {
        "patterns": scan.n_patterns,
        "synthetic_objects": int(synthetic_objects),
        "step_px": round(_finite(median_spacing_px(scan.positions_px)), 3),
        "mean_counts": float(f"{scan.mean_total_intensity(256):.4g}"),
        "units": scan.units,
    }


def probe_similarity(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Overlap of two probes' intensity profiles (first modes), 1 for the same profile,
    whatever their scale, global phase or phase ramp.

    >>> from ptychopinn.data.samples import make_probe
    >>> p = make_probe("disk", 32)
    >>> round(probe_similarity(p, 3 * p), 6)
    1.0
    """
    pa = np.asarray(a)
    pb = np.asarray(b)
    ia = np.abs(pa.reshape(-1, *pa.shape[-2:])[0]) ** 2
    ib = np.abs(pb.reshape(-1, *pb.shape[-2:])[0]) ** 2
    if ia.shape != ib.shape:
        return 0.0
    denom = math.sqrt(float(np.sum(ia * ia)) * float(np.sum(ib * ib)))
    return float(np.sum(ia * ib)) / denom if denom > 0 else 0.0


def compatibility(bundle: Bundle, scan: ScanData) -> list[str]:
    """Ways ``scan`` lies outside what ``bundle``'s network was trained on (empty if none)."""
    notes: list[str] = []
    similarity = probe_similarity(bundle.probe.cpu().numpy(), scan.probe)
    if similarity < PROBE_SIMILARITY_LIMIT:
        notes.append(
            f"its probe differs from the model's training probe (intensity overlap "
            f"{similarity:.2f} < {PROBE_SIMILARITY_LIMIT})"
        )
    trained_step = _positive(_run_record(bundle).get("training_data", {}).get("step_px")) or 0.0
    step = _finite(median_spacing_px(scan.positions_px))
    if trained_step > 0 and step > 0:
        ratio = step / trained_step
        if not 1 / STEP_RATIO_LIMIT <= ratio <= STEP_RATIO_LIMIT:
            notes.append(
                f"its scan step {step:.2f} px is {ratio:.2f} times the training step "
                f"{trained_step:.2f} px"
            )
    return notes


def warn_if_outside(bundle: Bundle, scan: ScanData) -> list[str]:
    """Log :func:`compatibility`'s findings as one warning; returns them."""
    notes = compatibility(bundle, scan)
    if notes:
        logger.warning(
            "%s: %s; the network alone may be poor here: refinement (the default) recovers "
            "what the data allow, --adapt S fine-tunes the model on this scan, and training on "
            "this probe (with --synthetic_objects) makes a model for it",
            scan.source,
            "; ".join(notes),
        )
    return notes


def adapt(
    bundle: Bundle,
    scan: ScanData,
    seconds: float | None = None,
    steps: int | None = None,
    device: torch.device | str = "cpu",
    learning_rate: float | None = None,
    seed: int = 0,
) -> tuple[Bundle, dict[str, Any]]:
    """A copy of ``bundle`` whose network was fine-tuned on ``scan`` (self-supervised).

    The training likelihood of the bundle's recipe (overlap groups merged on one object, the
    Poisson likelihood, the scan's bad pixels and background) is minimised over random
    groups of ``scan`` with Adam at ``learning_rate`` (default :data:`ADAPT_RATE_FRACTION`
    times the training peak rate, decaying on a cosine over the budget) until ``seconds`` have passed or ``steps`` steps
    were taken, whichever comes first. The bundle itself is not changed.

    Returns the adapted bundle and a record: steps, seconds, the rate, and the loss of the
    same :data:`EVAL_GROUPS` groups before and after.
    """
    from ptychopinn.data.datamodule import plan_epoch

    if seconds is None and steps is None:
        raise ConfigError("adapt: give seconds or steps")
    if (seconds is not None and not seconds > 0) or (steps is not None and steps < 1):
        raise ConfigError(f"adapt: expected seconds > 0 or steps >= 1, got {seconds}, {steps}")
    config = bundle.config
    if config.model.mode != "unsupervised":
        raise ConfigError("adapt: the model was trained on labels; adaptation needs the likelihood")
    bundle.check_compatible(N=scan.N, source=scan.source)
    m, t = config.model, config.training
    normalization = bundle.normalization.for_scan(scan)
    module = _training_module(bundle, scan, normalization, device)
    groups = training_groups(
        scan.positions_px, m.gridsize, m.overlap_grid, m.overlap_stride, None, seed,
        scan.scan_index,
    )  # fmt: skip
    dataset = GroupDataset(scan, groups, normalization)
    per_step = plan_epoch(config, len(dataset)).groups_per_step
    rate = learning_rate if learning_rate is not None else ADAPT_RATE_FRACTION * t.learning_rate
    optimizer = torch.optim.Adam(module.net.parameters(), lr=rate, betas=(0.9, t.adam_beta2))
    rng = np.random.default_rng(seed)
    held = np.sort(rng.choice(len(dataset), size=min(EVAL_GROUPS, len(dataset)), replace=False))

    def batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        x = dataset.group_amplitudes(rows).to(device)  # (B, P, N, N)
        offsets = torch.from_numpy(groups.offsets_px[rows].astype(np.float32)).to(device)
        return x, offsets

    def evaluated() -> float:
        with torch.no_grad():
            x, offsets = batch(held)
            return float(module.likelihood(module(x), x, offsets)[0])

    loss_before = evaluated()
    start = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - start
        done = max(
            elapsed / seconds if seconds else 0.0, step / steps if steps else 0.0
        )  # fraction of the budget spent
        if done >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = rate * 0.5 * (1.0 + math.cos(math.pi * done))
        rows = np.sort(rng.choice(len(dataset), size=min(per_step, len(dataset)), replace=False))
        x, offsets = batch(rows)
        loss, _ = module.likelihood(module(x), x, offsets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
    elapsed = time.perf_counter() - start
    record = {
        "steps": step,
        "seconds": round(elapsed, 2),
        "learning_rate": rate,
        "loss_before": loss_before,
        "loss_after": evaluated(),
        "eval_groups": int(held.size),
    }
    logger.info(
        "adapted the model to %s: %d steps in %.1f s; loss on %d groups %.6g -> %.6g",
        scan.source, step, elapsed, held.size, loss_before, record["loss_after"],
    )  # fmt: skip
    net = copy.deepcopy(module.net).cpu().eval()
    net.set_probe(bundle.probe.cpu())
    adapted = dataclasses.replace(bundle, net=net.to(bundle.probe.device))
    return adapted, record


def _training_module(
    bundle: Bundle, scan: ScanData, normalization: Any, device: torch.device | str
) -> Any:
    """The bundle's network inside its training module (likelihood with the scan's bad
    pixels and background), on ``device``, in training mode."""
    from ptychopinn.inference import background_tensor
    from ptychopinn.training.module import PtychoPINNModule

    good = scan.good_pixels
    module = PtychoPINNModule(
        bundle.config.to_dict(),
        normalization.to_dict(),
        n_probe_modes=bundle.probe.shape[0],
        probe=bundle.probe.cpu(),
        good_pixels=None if good is None else torch.from_numpy(good),
        background=background_tensor(scan, normalization),
    )
    module.net.load_state_dict(bundle.net.state_dict())
    return module.to(device).train()


def trained_r_factor(bundle: Bundle) -> float | None:
    """The R-factor the network reached at the end of training (validation, else training)."""
    run = _run_record(bundle)
    return _positive(run.get("val_r_factor")) or _positive(run.get("train_r_factor"))


def network_fit_ratio(
    bundle: Bundle,
    scan: ScanData,
    device: torch.device | str = "cpu",
    max_patterns: int = FIT_PATTERNS,
) -> float | None:
    """The network's data fit on ``scan`` against the photon noise's floor (the R-factor ratio
    of :func:`ptychopinn.fit.data_fit`), on the up to ``max_patterns`` patterns nearest the
    scan's centre (a compact region, overlapped as in the scan's interior).

    Training records it on the measured scan (``run.training_data.network_fit_ratio``) so that
    ``--adapt auto`` can tell how much worse the network explains a new scan than its own.
    """
    from ptychopinn.fit import data_fit
    from ptychopinn.inference import reconstruct as network_reconstruction

    if scan.n_patterns > max_patterns:
        offset = scan.positions_px - np.median(scan.positions_px, axis=0)
        scan = scan.subset(np.sort(np.argsort((offset**2).sum(axis=1))[:max_patterns]))
    rec = network_reconstruction(bundle, scan, device=device)
    fit = data_fit(scan, rec, bundle.probe, bundle.normalization.for_scan(scan), device)
    return None if fit is None else float(fit.ratio)


def trained_fit_ratio(bundle: Bundle) -> float | None:
    """:func:`network_fit_ratio` of the network on its measured training scan, if recorded."""
    return _positive(_run_record(bundle).get("training_data", {}).get("network_fit_ratio"))


def _run_record(bundle: Bundle) -> dict[str, Any]:
    """The manifest's ``run`` record: how the model was trained (empty if not recorded)."""
    run = bundle.manifest.get("run") if isinstance(bundle.manifest, dict) else None
    if not isinstance(run, dict):
        return {}
    data = run.get("training_data")
    return run if isinstance(data, dict) else {**run, "training_data": {}}


def _positive(value: Any) -> float | None:
    """``value`` as a float when it is a finite positive number (None otherwise)."""
    if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def adapted_if_new(
    bundle: Bundle,
    scan: ScanData,
    network: Reconstruction,
    device: torch.device | str = "cpu",
    steps: int = AUTO_ADAPT_STEPS,
) -> tuple[Bundle, dict[str, Any] | None]:
    """``--adapt auto``: adapt the model to ``scan`` when its answer (``network``) shows a
    sample unlike its training data.

    That is, when the network's data fit is poor against the photon noise's floor
    (:data:`~ptychopinn.fit.POOR_FIT_RATIO`) and either its R-factor is more than
    :data:`NOVELTY_RATIO` times what the network reached on its training data, or its fit
    over the noise floor is more than :data:`NOVELTY_FIT_RATIO` times the one it reached on
    its measured training scan (the first test follows the noise, which dominates at low
    dose; the second compares like with like at any dose). A scan like the training data (the
    same sample, the same class) keeps the model as it is; so does a bundle that records
    neither.
    """
    from ptychopinn.fit import data_fit

    trained, trained_ratio = trained_r_factor(bundle), trained_fit_ratio(bundle)
    if (trained is None and trained_ratio is None) or bundle.config.model.mode != "unsupervised":
        return bundle, None
    fit = data_fit(scan, network, bundle.probe, bundle.normalization.for_scan(scan), device)
    if fit is None or not fit.poor:
        return bundle, None
    worse_r = trained is not None and fit.r_factor > NOVELTY_RATIO * trained
    worse_fit = trained_ratio is not None and fit.ratio > NOVELTY_FIT_RATIO * trained_ratio
    if not (worse_r or worse_fit):
        return bundle, None
    logger.info(
        "the network's answer explains the patterns %.1f times worse than their noise allows "
        "(R-factor %.3f; %s on its training data): a new kind of sample, adapting the model "
        "to this scan for %d steps (--adapt 0: never)",
        fit.ratio, fit.r_factor, "not recorded" if trained is None else f"{trained:.3f}", steps,
    )  # fmt: skip
    adapted, record = adapt(bundle, scan, steps=steps, device=device)
    record.update(
        auto=True, network_r_factor=fit.r_factor, trained_r_factor=trained,
        network_fit_ratio=fit.ratio, trained_fit_ratio=trained_ratio,
    )  # fmt: skip
    return adapted, record
