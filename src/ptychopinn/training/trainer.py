"""The Lightning Trainer of a run: callbacks, logger, progress and the run directory's lock."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L

from ptychopinn.config import Config
from ptychopinn.errors import ConfigError, OutputExistsError

logger = logging.getLogger(__name__)

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


def _require(package: str, option: str, *modules: str) -> None:
    import importlib.util

    if not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ConfigError(f"{option} needs the '{package}' package: pip install {package}")


def make_logger(config: Config, run_dir: Path) -> Any:
    """The metrics logger of ``config.training.logger`` (False for none)."""
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


def quiet_lightning() -> None:
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


def progress_callbacks(progress: bool, steps_per_epoch: int, max_time_s: float | None) -> list:
    """A live bar on a terminal, one line per epoch otherwise; the wall-time estimate."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    from ptychopinn.training.progress import EpochLog, WallTimeEstimate

    out: list[Any] = [WallTimeEstimate(max_time_s)]
    if not progress:
        return out
    if sys.stderr.isatty():
        out.append(TQDMProgressBar(refresh_rate=max(1, steps_per_epoch // 50)))
    else:
        out.append(EpochLog())
    return out


def build_trainer(
    config: Config,
    run_dir: Path,
    accelerator: str,
    precision: str,
    callbacks: Sequence[Any],
    steps_per_epoch: int,
    progress: bool,
) -> L.Trainer:
    """The Lightning Trainer of a run (its bar only on a terminal)."""
    t = config.training
    live_bar = progress and sys.stderr.isatty()
    return L.Trainer(
        max_epochs=t.max_epochs,
        max_time=None if t.max_time is None else timedelta(seconds=t.max_time),
        accelerator=accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=precision,  # type: ignore[arg-type]
        deterministic=t.deterministic,
        logger=make_logger(config, run_dir),
        callbacks=list(callbacks),
        default_root_dir=run_dir,
        enable_progress_bar=live_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, steps_per_epoch // 2)),
        num_sanity_val_steps=0,
    )
