"""One training run: checks, the Trainer with its callbacks, the bundle at the end.

:func:`train` is the whole of ``ptychopinn train`` below its command line (re-exported by
:mod:`ptychopinn.workflows`, the Python API).
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

from ptychopinn.bundle import BUNDLE_NAME, save_bundle
from ptychopinn.config import Config
from ptychopinn.data.dataset import Normalization
from ptychopinn.data.synthetic import with_synthetic
from ptychopinn.device import resolve_accelerator, training_precision
from ptychopinn.errors import (
    BundleError,
    ConfigError,
    DataError,
    OutputExistsError,
    PtychoPINNError,
)
from ptychopinn.inference import background_tensor
from ptychopinn.io.scan import ScanData
from ptychopinn.presets import describe as describe_recipe
from ptychopinn.transfer import training_record

logger = logging.getLogger(__name__)


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
    measured = train_scan
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
            if config.model.mode == "unsupervised":
                record.update(_network_fit(config, normalization, module, measured))
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


def _network_fit(
    config: Config, normalization: Normalization, module: Any, scan: ScanData
) -> dict[str, float]:
    """The trained network's fit on its measured scan, for the bundle's training record (what
    ``infer --adapt auto`` compares a new scan's fit with); empty if it cannot be computed."""
    from ptychopinn.bundle import Bundle
    from ptychopinn.transfer import network_fit_ratio

    probe = module.physics.probe
    bundle = Bundle(config, normalization, module.net, probe, {})  # the network is copied
    try:
        ratio = network_fit_ratio(bundle, scan, probe.device)
    except (PtychoPINNError, RuntimeError, ValueError) as exc:  # the model is saved without it
        logger.warning("the network's fit on its training scan was not recorded (%s)", exc)
        return {}
    if ratio is None:
        return {}
    logger.info("the network explains its training scan %.2f times its noise floor", ratio)
    return {"network_fit_ratio": round(ratio, 4)}
