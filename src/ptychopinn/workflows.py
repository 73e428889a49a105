"""High-level Python API: ``train``, ``load_bundle``, ``reconstruct``, ``evaluate_reconstruction``.

Usable from a notebook without the CLI::

    from ptychopinn import workflows as pp
    scan = pp.read_scan("scan.npz")
    run = pp.train(pp.Config(), scan, "runs/a")
    bundle = pp.load_bundle(run.bundle_path)
    rec = pp.reconstruct(bundle, scan)

and, for a new scan, ``bundle, _ = pp.adapt(bundle, new_scan, seconds=20)`` first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychopinn.bundle import BUNDLE_NAME, Bundle, load_bundle, save_bundle
from ptychopinn.config import Config
from ptychopinn.data.dataset import Normalization
from ptychopinn.data.synthetic import with_synthetic
from ptychopinn.device import resolve_accelerator, training_precision
from ptychopinn.errors import BundleError, ConfigError, DataError, OutputExistsError
from ptychopinn.inference import background_tensor
from ptychopinn.inference import reconstruct as network_reconstruction
from ptychopinn.io.npz import read_npz
from ptychopinn.io.paths import check_regular_file
from ptychopinn.io.scan import ScanData
from ptychopinn.presets import describe as describe_recipe
from ptychopinn.reconstruction import Reconstruction
from ptychopinn.transfer import adapt, training_record

logger = logging.getLogger(__name__)

__all__ = [
    "Config",
    "TrainingRun",
    "adapt",
    "evaluate_reconstruction",
    "load_bundle",
    "read_scan",
    "reconstruct",
    "refine_reconstruction",
    "train",
]


def read_scan(path: str | os.PathLike[str], units: str = "auto") -> ScanData:
    """Read a scan from an NPZ, a chunked HDF5 scan, a CXI file, or a Ptychodus pair.

    An ``.h5`` / ``.hdf5`` file with the root attribute ``format = "ptychopinn-scan"`` is a
    chunked HDF5 scan (:mod:`ptychopinn.io.hdf5`), whose patterns stream from disk. Any other
    HDF5 file, or a directory holding ``product.h5``, is a Ptychodus scan named by its
    ``product.h5``, its ``diffraction.h5`` or the directory; its patterns are photon counts
    whatever their dtype. A ``.cxi`` file, or HDF5 with ``/entry_1/data_1/data``, is read as
    CXI (:mod:`ptychopinn.io.cxi`); an NPZ with ``data``, ``scan`` and ``probe`` as the tike /
    pty-chi layout (:mod:`ptychopinn.io.tike`). An NPZ saved without compression has its
    patterns memory-mapped.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():  # a FIFO or a device is refused before it is opened
        check_regular_file(p, "a scan file")
    if p.suffix in (".h5", ".hdf5") and p.is_file():
        from ptychopinn.io.hdf5 import is_scan_h5, read_scan_h5

        if is_scan_h5(p):
            return read_scan_h5(p, units)  # type: ignore[arg-type]
    from ptychopinn.io.cxi import is_cxi, read_cxi

    if is_cxi(p):
        return read_cxi(p, units)
    if p.suffix in (".h5", ".hdf5") or (p.is_dir() and (p / "product.h5").is_file()):
        from ptychopinn.io.ptychodus_files import read_scan as read_ptychodus_scan

        if units == "amplitude":
            raise ConfigError(
                f"{p}: Ptychodus diffraction patterns are photon counts; "
                "--diffraction-units amplitude does not apply"
            )
        return read_ptychodus_scan(p)
    return read_npz(p, units)  # type: ignore[arg-type]


@dataclass
class TrainingRun:
    """What a training run left on disk and how it went."""

    run_dir: Path
    bundle_path: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    recipe: str = ""


def train(
    config: Config,
    train_scan: ScanData,
    output_dir: str | os.PathLike[str],
    val_scan: ScanData | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> TrainingRun:
    """Train a model and write ``output_dir/wts.h5.zip`` plus checkpoints and logs.

    Parameters
    ----------
    config : the whole configuration (``Config()`` is the default recipe); N must equal the
        scan's pattern size
    train_scan : the scan to train on (self-supervised unless ``config.model.mode``
        is ``supervised``)
    output_dir : run directory; refused if it already holds a bundle, unless
        ``overwrite`` or ``resume``
    val_scan : validation scan (default: a held-out fraction of the groups)
    resume : continue from ``output_dir/checkpoints/last.ckpt``
    progress : a live bar on a terminal, one log line per epoch otherwise
    callbacks : extra Lightning callbacks (e.g. Ptychodus's loss collector)
    """
    import lightning as L

    from ptychopinn.data.datamodule import GroupDataModule
    from ptychopinn.training.module import PtychoPINNModule
    from ptychopinn.training.trainer import prepare_run_dir, quiet_lightning, run_lock

    quiet_lightning()
    _check_scans(config, train_scan, val_scan)
    record = training_record(train_scan, config.training.synthetic_objects)
    if config.training.synthetic_objects:
        if config.model.mode == "supervised":
            raise ConfigError(
                "synthetic_objects: supervised training needs labels for the measured scan too; "
                "use the default self-supervised mode"
            )
        train_scan = with_synthetic(
            train_scan, config.training.synthetic_objects, config.training.seed
        )
    run_dir = Path(output_dir)
    bundle_path = run_dir / BUNDLE_NAME
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume:
        check_resumable(last, config)
    _check_distributed(config)
    accelerator = resolve_accelerator(config.training.accelerator)
    precision = training_precision(config.training.precision, accelerator)
    recipe = describe_recipe(config)
    with run_lock(run_dir):
        prepare_run_dir(run_dir, resume, overwrite)
        L.seed_everything(config.training.seed, workers=True, verbose=False)
        normalization = Normalization.from_scan(train_scan, config.training.nphotons)
        datamodule = GroupDataModule(config, train_scan, normalization, val_scan)
        datamodule.setup("fit")
        _log_plan(config, datamodule.plan, recipe, accelerator, precision)
        module = PtychoPINNModule(
            config.to_dict(),
            normalization.to_dict(),
            n_probe_modes=train_scan.n_probe_modes,
            probe=torch.from_numpy(train_scan.probe),
            good_pixels=_good_pixels(train_scan, val_scan),
            background=background_tensor(train_scan, normalization),
        )
        trainer, checkpoint = _trainer(
            config, run_dir, datamodule, accelerator, precision, callbacks, progress
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
        elapsed = time.perf_counter() - start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics.update(training_s=elapsed, epochs=trainer.current_epoch, steps=trainer.global_step)
        if trainer.is_global_zero:
            run = {
                "recipe": recipe,
                "accelerator": accelerator,
                "precision": precision,
                "training_data": record,
                **metrics,
            }
            save_bundle(
                bundle_path, config, normalization, module.net, module.physics.probe, run=run
            )
            logger.info("wrote %s (%.1f s of training)", bundle_path, elapsed)
    best = checkpoint.best_model_path
    return TrainingRun(
        run_dir=run_dir,
        bundle_path=bundle_path,
        last_checkpoint=last if last.exists() else None,
        best_checkpoint=Path(best) if best else None,
        metrics=metrics,
        recipe=recipe,
    )


def check_resumable(last: Path, config: Config) -> None:
    """``--resume`` needs a whole checkpoint of the same model: say so before any work."""
    if not last.exists():
        raise OutputExistsError(
            f"{last.parent.parent}: --resume needs {last}, which does not exist"
        )
    try:
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        saved = checkpoint["hyper_parameters"]["config"]
    except Exception as exc:  # torch raises a dozen types on damaged or truncated files
        raise BundleError(
            f"{last}: not a readable checkpoint ({type(exc).__name__}); it may be truncated: "
            "start a new run with --overwrite"
        ) from exc
    from ptychopinn.config import migrate_saved_config

    try:
        model = Config.from_dict(migrate_saved_config(saved)).model
    except (ConfigError, TypeError) as exc:
        raise BundleError(f"{last}: its config: {exc}") from exc
    if model != config.model:
        changed = [
            f"{name} {getattr(model, name)!r} -> {getattr(config.model, name)!r}"
            for name in model.__dataclass_fields__
            if getattr(model, name) != getattr(config.model, name)
        ]
        raise ConfigError(
            f"{last}: --resume continues the same model, but the config changes "
            f"{', '.join(changed)}; drop those flags or start a new run with --overwrite"
        )


def _check_distributed(config: Config) -> None:
    """Several nodes need a launcher that starts a process on each (else nothing joins)."""
    t = config.training
    launched = any(name in os.environ for name in ("SLURM_NTASKS", "WORLD_SIZE", "MASTER_ADDR"))
    if t.num_nodes > 1 and not launched:
        raise ConfigError(
            f"num_nodes {t.num_nodes}: start one process per node with a launcher (srun "
            "under SLURM, or torchrun --nnodes ...); on its own this run would wait forever "
            "for the other nodes"
        )


def _good_pixels(train_scan: ScanData, val_scan: ScanData | None) -> torch.Tensor | None:
    """The detector pixels the training likelihood counts: bad in neither scan."""
    bad = [
        s.bad_pixels for s in (train_scan, val_scan) if s is not None and s.bad_pixels is not None
    ]
    if not bad or not np.any(bad):
        return None
    return torch.from_numpy((~np.logical_or.reduce(bad)).astype(np.float32))


def _check_scans(config: Config, train_scan: ScanData, val_scan: ScanData | None) -> None:
    """The scans fit the config: N, and labels for supervised validation."""
    m = config.model
    if train_scan.N != m.N:
        raise ConfigError(
            f"N: config has N = {m.N} but {train_scan.source} has "
            f"{train_scan.N}x{train_scan.N} patterns"
        )
    if val_scan is not None and val_scan.N != m.N:
        raise DataError(
            f"{val_scan.source}: expected {m.N}x{m.N} patterns, got {val_scan.N}x{val_scan.N}"
        )
    labelled = val_scan is None or val_scan.patches is not None or val_scan.object is not None
    if m.mode == "supervised" and not labelled:
        raise DataError(
            f"{val_scan.source}: supervised validation needs 'Y' or 'objectGuess'; neither is "  # type: ignore[union-attr]
            "present (omit --val_data to validate on held-out groups of the training scan)"
        )
    for scan in (train_scan,) if val_scan is None else (train_scan, val_scan):
        check_diffraction_geometry(scan)


def check_diffraction_geometry(scan: ScanData) -> Any:
    """Refuse patterns whose zero frequency is in the corner; warn of a centre offset.

    Returns the :class:`~ptychopinn.io.summary.DiffractionGeometry` it measured."""
    from ptychopinn.io.summary import diffraction_geometry

    geometry = diffraction_geometry(scan)
    problems = geometry.problems()
    if problems:
        raise DataError(f"{scan.source}: {problems[0]}")
    for warning in geometry.warnings():
        logger.warning("%s: %s", scan.source, warning)
    return geometry


def _log_plan(config: Config, plan: Any, recipe: str, accelerator: str, precision: str) -> None:
    """One line before training: the recipe, the groups, the optimiser steps, the device."""
    m, t = config.model, config.training
    group = f"{m.K} inputs" if m.C == 1 else f"{m.K} inputs of {m.C} patterns"
    if m.K > 1:
        group += f" {m.overlap_stride} scan steps apart"
    limit = f" (or {t.max_time:g} s, whichever ends first)" if t.max_time is not None else ""
    logger.info(
        "recipe %s: %d groups of %s; %d groups per epoch, %d per step: %d steps x %d epochs "
        "= %d optimiser steps%s; %s, precision %s",
        recipe,
        plan.n_groups,
        group,
        plan.groups_per_epoch,
        plan.groups_per_step,
        plan.steps_per_epoch,
        t.max_epochs,
        plan.steps_per_epoch * t.max_epochs,
        limit,
        accelerator,
        precision,
    )


def _trainer(
    config: Config,
    run_dir: Path,
    datamodule: Any,
    accelerator: str,
    precision: str,
    callbacks: Sequence[Any],
    progress: bool,
) -> tuple[Any, Any]:
    """The Trainer with the run's safety, checkpoint and progress callbacks."""
    from lightning.pytorch.callbacks import EarlyStopping

    from ptychopinn.training.callbacks import (
        GracefulShutdown,
        LastStateCheckpoint,
        NonFiniteLossGuard,
    )
    from ptychopinn.training.progress import TrainingHistory
    from ptychopinn.training.trainer import build_trainer, progress_callbacks

    t = config.training
    monitor = "val_loss" if datamodule.val_set is not None else "train_loss"
    checkpoint = LastStateCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-{epoch:03d}",
        monitor=monitor,
        save_last=True,
        save_top_k=1,
    )
    steps = datamodule.plan.steps_per_epoch
    trainer_callbacks: list[Any] = [
        NonFiniteLossGuard(),
        GracefulShutdown(run_dir / "checkpoints" / "last.ckpt"),
        checkpoint,
        *callbacks,
        *progress_callbacks(progress, steps, t.max_time),
        TrainingHistory(run_dir),
    ]
    if t.early_stopping_patience is not None:
        trainer_callbacks.append(EarlyStopping(monitor=monitor, patience=t.early_stopping_patience))
    trainer = build_trainer(
        config, run_dir, accelerator, precision, trainer_callbacks, steps, progress
    )
    return trainer, checkpoint


def reconstruct(
    bundle: Bundle,
    scan: ScanData,
    refine: int | str = "auto",
    refine_probe: bool = False,
    refine_from: str = "network",
    device: torch.device | str = "cpu",
    refine_positions: str | None = None,
    adapt: float | str = "auto",
    **network_options: Any,
) -> Reconstruction:
    """The best estimate of the object: the network's reconstruction, refined.

    ``adapt``: seconds of fine-tuning the network on ``scan`` first (:func:`adapt`), 0 never,
    or ``"auto"``: when the network explains the scan much worse than its training data (a new
    kind of sample) and refinement follows (:func:`~ptychopinn.transfer.adapted_if_new`).

    ``refine="auto"`` (the default) refines until held-out patterns stop becoming more
    likely and never returns something worse than the network alone by that measure;
    ``refine=0`` returns the network alone; ``refine=N`` runs exactly N passes.
    ``refine_from="flat"`` refines from a flat object instead. ``refine_positions``
    (``"free"`` or ``"affine"``) corrects the scan positions too (the result's
    ``positions_px``; :func:`scan_with_positions` makes a scan of them). ``network_options`` go to
    :func:`ptychopinn.inference.reconstruct` (``n_groups``, ``batch_size``, ``weights``,
    ``synchronize``, ``precision``, ``chunk_patterns``).
    """
    bundle, network, record = adapted_network(
        bundle, scan, adapt, refine, device, **network_options
    )
    if refine == 0:
        return network
    start = None if refine_from == "flat" else network
    budget = network_options.get("max_memory_gb")
    options = refine_options(bundle, start, refine, refine_probe, budget, refine_positions)
    rec = refine_reconstruction(bundle, scan, start, refine, refine_probe, device, options)
    if refine == "auto" and not refine_probe and not refine_positions:
        rec = corrected_if_poor(bundle, scan, start, rec, device, budget)
    return rec if record is None else rec.replace(metadata={**rec.metadata, "adapt": record})


def adapted_network(
    bundle: Bundle,
    scan: ScanData,
    adapt: float | str = "auto",
    refine: int | str = "auto",
    device: torch.device | str = "cpu",
    **network_options: Any,
) -> tuple[Bundle, Reconstruction, dict[str, Any] | None]:
    """The model to use on ``scan`` (adapted to it or not, see :func:`reconstruct`), its
    network reconstruction, and the adaptation's record (None when it did not adapt). With
    ``refine=0`` (the network alone) ``"auto"`` does not adapt."""
    from ptychopinn import transfer

    record = None
    if adapt != "auto" and adapt:
        bundle, record = transfer.adapt(bundle, scan, seconds=float(adapt), device=device)
    network = network_reconstruction(bundle, scan, device=device, **network_options)
    if adapt == "auto" and refine != 0:
        bundle, record = transfer.adapted_if_new(bundle, scan, network, device)
        if record is not None:
            network = network_reconstruction(bundle, scan, device=device, **network_options)
    if record is not None:
        network = network.replace(metadata={**network.metadata, "adapt": record})
    return bundle, network, record


def corrected_if_poor(
    bundle: Bundle,
    scan: ScanData,
    start: Reconstruction | None,
    rec: Reconstruction,
    device: torch.device | str = "cpu",
    max_memory_gb: float | None = None,
) -> Reconstruction:
    """``rec``, or, where it explains the patterns worse than their noise allows (a probe
    from another defocus, positions off by a pixel: :mod:`ptychopinn.fit`), the ``auto``
    refinement from ``start`` with the probe and the positions corrected too, if that
    explains them better (the probe alone first). What happened goes into the metadata
    (``corrections``)."""
    from ptychopinn.fit import GOOD_FIT_RATIO, data_fit

    normalization = bundle.normalization.for_scan(scan)
    probe = bundle.probe if rec.probe is None else torch.from_numpy(rec.probe)
    fit = data_fit(scan, rec, probe, normalization, device)
    if fit is None or not fit.poor:
        return rec
    record: dict[str, Any] = {"r_factor_before": fit.r_factor, "noise_floor": fit.noise_floor}
    best, best_r = rec, fit.r_factor
    # the probe first (positions that are right lose a little when they are set free), then
    # the probe and the positions, until the fit is within 1.2 times its floor
    for positions in (None, "free"):
        what = "the probe" + (" and the positions" if positions else "")
        logger.info(
            "data fit %.4f is %.1f times its noise floor %.4f: refining %s as well",
            best_r, best_r / max(fit.noise_floor, 1e-12), fit.noise_floor, what,
        )  # fmt: skip
        options = refine_options(bundle, start, "auto", True, max_memory_gb, positions)
        candidate = refine_reconstruction(bundle, scan, start, "auto", True, device, options)
        assert candidate.probe is not None
        new = data_fit(scan, candidate, torch.from_numpy(candidate.probe), normalization, device)
        if new is not None and new.r_factor < best_r:
            best, best_r = candidate, new.r_factor
            record.update(r_factor_after=new.r_factor, probe=True, positions=positions)
            if new.ratio <= GOOD_FIT_RATIO:
                break
    if best is rec:
        logger.info("the corrections did not explain the patterns better: kept without them")
    record["kept"] = best is not rec
    return best.replace(metadata={**best.metadata, "corrections": record})


def refine_reconstruction(
    bundle: Bundle,
    scan: ScanData,
    start: Reconstruction | None,
    passes: int | str = "auto",
    refine_probe: bool = False,
    device: torch.device | str = "cpu",
    options: Any = None,
) -> Reconstruction:
    """Maximum-likelihood refinement with the bundle's forward model (:mod:`ptychopinn.refinement`).

    ``start`` is the network's reconstruction (or None for a flat object); ``passes`` is
    ``"auto"`` (:func:`~ptychopinn.refine_auto.refine_auto`) or a number of passes. A start
    from a collapsed network (a tiled constant patch) is a worse start than a flat object, so
    refinement then starts flat, with a warning. ``options`` replaces the settings chosen
    for the start (:func:`refine_options`).
    """
    from ptychopinn.refine_auto import refine_auto
    from ptychopinn.refinement import refine

    if passes != "auto" and (not isinstance(passes, int) or passes < 0):
        raise ConfigError(f"refine: expected 'auto' or a number of passes >= 0, got {passes!r}")
    network = start
    if start is not None and start.collapsed:
        logger.warning("the network's reconstruction is collapsed: refining from a flat object")
        start = None
    opts = options or refine_options(bundle, start, passes, refine_probe)
    normalization = bundle.normalization.for_scan(scan)
    if passes != "auto":
        return refine(scan, bundle.probe, normalization, start, opts, device)[0]
    rec = refine_auto(scan, bundle.probe, normalization, start, opts, device)[0]
    if rec.refinement is not None and rec.refinement.passes == 0 and network is not None:
        return network.replace(refinement=rec.refinement)  # nothing better than the network's
    return rec


#: Most passes ``refine="auto"`` runs (its step sizes anneal over these).
AUTO_MAX_PASSES = 100


def refine_options(
    bundle: Bundle,
    start: Reconstruction | None,
    passes: int | str,
    refine_probe: bool,
    max_memory_gb: float | None = None,
    refine_positions: str | None = None,
) -> Any:
    """Refinement settings for a start.

    A network trained with the overlap constraint (or on channels of neighbours) predicts
    the large-scale phase too: refinement keeps it and takes small steps (0.02, reached over
    the first 5 passes, without the coarse correction field), which improve such a start
    without first shaking it. A network that saw one pattern at a time
    cannot know its patches' constant phases: refinement discards the start's large-scale
    phase and takes bold steps (0.1) with the coarse correction field, as from a flat start.
    ``auto`` anneals its steps from the first pass, so its held-out likelihood improves
    steadily until the data stop supporting more. ``refine_positions`` (``free`` or
    ``affine``) moves the positions by steps of 0.1 px from the fifth pass on, each by at
    most 3 px per axis (:mod:`ptychopinn.positions`). ``refine_probe`` refines the probe by
    steps of 0.1 (0.01 recovered too little of a probe from another defocus in 150 passes).
    """
    from ptychopinn.refinement import RefineOptions

    n_iter = AUTO_MAX_PASSES if passes == "auto" else int(passes)
    m = bundle.config.model
    trusted = start is not None and (m.K > 1 or m.C > 1)
    return RefineOptions(
        n_iter=n_iter,
        coarse_factor=0 if trusted else 16,
        object_lr=0.02 if trusted else 0.1,
        start_phase_sigma_px=0.0 if trusted else None,
        anneal_start=0.0 if passes == "auto" else 0.5,
        warmup_passes=5.0 if trusted else 0.0,
        probe_lr=0.1 if refine_probe else 0.0,
        max_memory_gb=max_memory_gb,
        position_lr=0.1 if refine_positions else 0.0,
        position_constraint=refine_positions or "free",  # type: ignore[arg-type]  # checked there
    )


def scan_with_positions(scan: ScanData, rec: Reconstruction) -> ScanData:
    """``scan`` with the positions of ``rec`` (e.g. corrected by ``refine_positions``).

    The reconstruction's positions are the scan's, pattern by pattern, in the scan's frame
    (y, x object pixels), so the result trains and reconstructs like any scan; the given
    positions become its nominal ones (unless it has them already).
    :func:`ptychopinn.io.npz.write_scan_npz` writes it (``infer --export_scan``).
    """
    from dataclasses import replace

    if rec.positions_px.shape != scan.positions_px.shape:
        raise ConfigError(
            f"scan_with_positions: {len(rec.positions_px)} positions for {scan.n_patterns} patterns"
        )
    nominal = scan.positions_px if scan.nominal_positions_px is None else scan.nominal_positions_px
    return replace(
        scan,
        positions_px=np.asarray(rec.positions_px, dtype=np.float64),
        nominal_positions_px=nominal,
    )


def write_metrics(
    rec: Reconstruction,
    reference: np.ndarray,
    out: Path,
    pixel_size_m: float | None = None,
    network_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``rec`` against ``reference``; write metrics.json and comparison.png into ``out``."""
    from dataclasses import asdict

    from ptychopinn.evaluation import write_comparison_figure
    from ptychopinn.io.npz import write_json

    result = evaluate_reconstruction(rec, reference, pixel_size_m or rec.pixel_size_m)
    metrics = result.metrics.to_dict()
    if rec.refinement is not None:
        metrics["refinement"] = asdict(rec.refinement)
    if network_metrics is not None:
        metrics["network_only"] = network_metrics
    write_json(Path(out) / "metrics.json", metrics)
    write_comparison_figure(
        Path(out) / "comparison.png",
        result.aligned_reconstruction,
        result.aligned_reference,
        result.metrics,
    )
    return metrics


def evaluate_reconstruction(
    reconstruction: Reconstruction,
    reference: np.ndarray,
    pixel_size_m: float | None = None,
) -> Any:
    """Compare a reconstruction with a reference object on the same object grid.

    The comparison is restricted to the well-reconstructed region (central
    support of every patch), with registration, global phase and ramp removed.
    """
    from ptychopinn.evaluation import compare, scanned_region

    rec_full = reconstruction.on_object_grid(reference.shape)
    box = scanned_region(reconstruction.positions_px, reconstruction.N, reference.shape)
    return compare(rec_full, reference, crop_box=box, pixel_size_m=pixel_size_m)


__all__ += ["Bundle", "Normalization", "Reconstruction", "network_reconstruction", "write_metrics"]
