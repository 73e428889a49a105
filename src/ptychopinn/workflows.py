"""High-level Python API: ``train``, ``load_bundle``, ``reconstruct``, ``evaluate_reconstruction``.

Usable from a notebook without the CLI::

    from ptychopinn import workflows as pp
    scan = pp.read_scan("scan.npz")
    run = pp.train(pp.Config(), scan, "runs/a")
    bundle = pp.load_bundle(run.bundle_path)
    rec = pp.reconstruct(bundle, scan)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychopinn.bundle import BUNDLE_NAME, Bundle, load_bundle, save_bundle
from ptychopinn.config import Config
from ptychopinn.data.dataset import Normalization
from ptychopinn.errors import ConfigError, DataError, OutputExistsError
from ptychopinn.inference import Reconstruction, reconstruct
from ptychopinn.io.npz import read_npz
from ptychopinn.io.scan import ScanData

logger = logging.getLogger(__name__)

__all__ = [
    "Config",
    "TrainingRun",
    "evaluate_reconstruction",
    "load_bundle",
    "read_scan",
    "reconstruct",
    "refine_reconstruction",
    "train",
]


def read_scan(path: str | os.PathLike[str], units: str = "auto") -> ScanData:
    """Read a scan from an NPZ (SPEC §4.1), a chunked HDF5 scan, or a Ptychodus pair (SPEC §4.2).

    An ``.h5`` / ``.hdf5`` file with the root attribute ``format = "ptychopinn-scan"`` is a
    chunked HDF5 scan (:mod:`ptychopinn.io.hdf5`), whose patterns stream from disk. Any other
    HDF5 file, or a directory holding ``product.h5``, is a Ptychodus scan named by its
    ``product.h5``, its ``diffraction.h5`` or the directory; its patterns are photon counts
    whatever their dtype. An NPZ saved without compression has its patterns memory-mapped.
    """
    p = Path(path)
    if p.suffix in (".h5", ".hdf5") and p.is_file():
        from ptychopinn.io.hdf5 import is_scan_h5, read_scan_h5

        if is_scan_h5(p):
            return read_scan_h5(p, units)  # type: ignore[arg-type]
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


_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NODEID")


def is_rank_zero_process() -> bool:
    """True in the process that launched the run (or global rank 0 under torchrun / SLURM)."""
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Refuse a second run into the same directory while one is active.

    Only the rank-zero process holds the lock; the other ranks of a distributed
    run (started by Lightning, torchrun or srun) share it.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if not is_rank_zero_process():
        yield
        return
    lock = run_dir / ".ptychopinn.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError as exc:
        raise OutputExistsError(
            f"{run_dir}: another run is using this directory (remove {lock.name} if it crashed)"
        ) from exc
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def resolve_accelerator(accelerator: str) -> str:
    """Map user spellings to Lightning's and fall back to the CPU when no GPU is present."""
    if accelerator == "cuda":
        accelerator = "gpu"
    if accelerator == "gpu" and not torch.cuda.is_available():
        warnings.warn("no CUDA GPU is available: falling back to the CPU", stacklevel=2)
        return "cpu"
    if accelerator == "mps" and not torch.backends.mps.is_available():
        warnings.warn("MPS is not available: falling back to the CPU", stacklevel=2)
        return "cpu"
    return accelerator


def _require(package: str, option: str, *modules: str) -> None:
    import importlib.util

    if not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ConfigError(f"{option} needs the '{package}' package: pip install {package}")


def _make_logger(config: Config, run_dir: Path) -> Any:
    from lightning.pytorch import loggers

    kind = config.training.logger
    if kind == "none":
        return False
    if kind == "tensorboard":
        _require("tensorboard", "--logger tensorboard", "tensorboard", "tensorboardX")
        return loggers.TensorBoardLogger(save_dir=run_dir, name="lightning_logs")
    if kind == "mlflow":
        _require("mlflow", "--logger mlflow", "mlflow")
        uri = config.training.mlflow_tracking_uri or (run_dir / "mlruns").resolve().as_uri()
        return loggers.MLFlowLogger(experiment_name="ptychopinn", tracking_uri=uri)
    return loggers.CSVLogger(save_dir=run_dir, name="lightning_logs")


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
    config : the whole configuration; N must equal the scan's pattern size
    train_scan : the scan to train on (self-supervised unless ``config.model.mode``
        is ``supervised``)
    output_dir : run directory; refused if it already holds a bundle, unless
        ``overwrite`` or ``resume``
    val_scan : validation scan (default: a held-out fraction of the groups)
    resume : continue from ``output_dir/checkpoints/last.ckpt``
    callbacks : extra Lightning callbacks (e.g. Ptychodus's loss collector)
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar

    from ptychopinn.data.datamodule import GroupDataModule
    from ptychopinn.training.callbacks import (
        GracefulShutdown,
        LastStateCheckpoint,
        NonFiniteLossGuard,
    )
    from ptychopinn.training.module import PtychoPINNModule

    _quiet_lightning()
    m, t = config.model, config.training
    if train_scan.N != m.N:
        raise ConfigError(
            f"N: config has N = {m.N} but {train_scan.source} has {train_scan.N}x{train_scan.N} patterns"
        )
    if val_scan is not None and val_scan.N != m.N:
        raise DataError(
            f"{val_scan.source}: expected {m.N}x{m.N} patterns, got {val_scan.N}x{val_scan.N}"
        )
    run_dir = Path(output_dir)
    bundle_path = run_dir / BUNDLE_NAME
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise OutputExistsError(f"{run_dir}: --resume needs {last}, which does not exist")
    if bundle_path.exists() and not (overwrite or resume):
        raise OutputExistsError(
            f"{run_dir}: already holds a trained model ({BUNDLE_NAME}); pass --overwrite or --resume"
        )
    with run_lock(run_dir):
        L.seed_everything(t.seed, workers=True, verbose=False)
        normalization = Normalization.from_scan(train_scan, t.nphotons)
        datamodule = GroupDataModule(config, train_scan, normalization, val_scan)
        module = PtychoPINNModule(
            config.to_dict(),
            normalization.to_dict(),
            n_probe_modes=train_scan.n_probe_modes,
            probe=torch.from_numpy(train_scan.probe),
        )
        has_val = val_scan is not None or round(_n_groups(train_scan, config) * t.val_fraction) > 0
        monitor = "val_loss" if has_val else "train_loss"
        checkpoint = LastStateCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="best-{epoch:03d}",
            monitor=monitor,
            save_last=True,
            save_top_k=1,
        )
        trainer_callbacks: list[Any] = [
            NonFiniteLossGuard(),
            GracefulShutdown(last),
            checkpoint,
            *callbacks,
        ]
        if t.early_stopping_patience is not None:
            trainer_callbacks.append(
                EarlyStopping(monitor=monitor, patience=t.early_stopping_patience)
            )
        if progress:
            trainer_callbacks.append(
                TQDMProgressBar(
                    refresh_rate=max(1, _n_groups(train_scan, config) // t.batch_size // 20)
                )
            )
        trainer = L.Trainer(
            max_epochs=t.max_epochs,
            accelerator=resolve_accelerator(t.accelerator),
            devices=t.devices,
            num_nodes=t.num_nodes,
            strategy=t.strategy,
            precision=t.precision,  # type: ignore[arg-type]
            deterministic=t.deterministic,
            logger=_make_logger(config, run_dir),
            callbacks=trainer_callbacks,
            default_root_dir=run_dir,
            enable_progress_bar=progress,
            enable_model_summary=False,
            log_every_n_steps=max(1, min(50, _n_groups(train_scan, config) // t.batch_size // 2)),
            num_sanity_val_steps=0,
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
        elapsed = time.perf_counter() - start
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics.update(training_s=elapsed, epochs=trainer.current_epoch)
        if trainer.is_global_zero:
            save_bundle(bundle_path, config, normalization, module.net, module.physics.probe)
            logger.info("wrote %s (%.1f s of training)", bundle_path, elapsed)
    best = checkpoint.best_model_path
    return TrainingRun(
        run_dir=run_dir,
        bundle_path=bundle_path,
        last_checkpoint=last if last.exists() else None,
        best_checkpoint=Path(best) if best else None,
        metrics=metrics,
    )


def refine_reconstruction(
    bundle: Bundle,
    scan: ScanData,
    start: Reconstruction | None,
    passes: int = 20,
    refine_probe: bool = False,
    device: torch.device | str = "cpu",
    options: Any = None,
) -> Reconstruction:
    """Maximum-likelihood refinement with the bundle's forward model (see :mod:`ptychopinn.refinement`).

    ``start`` is the network's reconstruction (or None for a flat object). A start from a
    collapsed network (``start.metadata["collapsed"]``, a tiled constant patch) is a worse
    start than a flat object, so refinement then starts flat, with a warning.
    """
    from ptychopinn.refinement import RefineOptions, refine

    if start is not None and start.metadata.get("collapsed"):
        logger.warning("the network's reconstruction is collapsed: refining from a flat object")
        start = None

    opts = options or RefineOptions(n_iter=passes, probe_lr=0.01 if refine_probe else 0.0)
    rec, _, _ = refine(scan, bundle.probe, bundle.normalization.for_scan(scan), start, opts, device)
    return rec


def _quiet_lightning() -> None:
    """Keep Lightning's banners and known-harmless warnings out of the user's terminal."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*LeafSpec.*",
        ".*does not have many workers.*",
        ".*smaller than the logging interval.*",
        ".*GPU available but not used.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _n_groups(scan: ScanData, config: Config) -> int:
    n = config.training.n_groups
    return scan.n_patterns if n is None else min(n, scan.n_patterns)


def evaluate_reconstruction(
    reconstruction: Reconstruction,
    reference: np.ndarray,
    pixel_size_m: float | None = None,
) -> Any:
    """Compare a reconstruction with a reference object on the same object grid (SPEC §8).

    The comparison is restricted to the well-reconstructed region (central
    support of every patch), with registration, global phase and ramp removed.
    """
    from ptychopinn.evaluation import compare, scanned_region

    rec_full = reconstruction.on_object_grid(reference.shape)
    n = int(reconstruction.metadata.get("N", 64))
    box = scanned_region(reconstruction.positions_px, n, reference.shape)
    return compare(rec_full, reference, crop_box=box, pixel_size_m=pixel_size_m)


__all__ += ["Bundle", "Normalization"]
