"""The Lightning Trainer of a run: callbacks, logger, progress and the run directory's lock."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L

from ptychopinn.config import Config
from ptychopinn.errors import ConfigError, OutputError, OutputExistsError
from ptychopinn.io.outputs import os_errors

logger = logging.getLogger(__name__)

_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "SLURM_NODEID")


def is_rank_zero_process() -> bool:
    """True in the process that launched the run (or global rank 0 under torchrun / SLURM)."""
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)


LOCK_NAME = ".ptychopinn.lock"


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Refuse a second run into the same directory while one is active.

    The lock file records the host and process id of its holder. A lock whose process is
    gone (same host, no such process) is stale: it is broken, with a warning, so a run killed
    with SIGKILL does not block the next. Only the rank-zero process holds the lock; the
    other ranks of a distributed run (started by Lightning, torchrun or srun) share it.
    """
    with os_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    if not is_rank_zero_process():
        yield
        return
    lock = run_dir / LOCK_NAME
    _acquire(lock)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _acquire(lock: Path) -> None:
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            with os_errors(lock):
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OutputError as exc:
            if not isinstance(exc.__cause__, FileExistsError):
                raise
            holder = _holder(lock)
            if holder is None or not _stale(*holder):
                who = f" (process {holder[1]} on {holder[0]})" if holder else ""
                raise OutputExistsError(
                    f"{lock.parent}: another run is using this directory{who}; remove "
                    f"{lock.name} if that run has ended"
                ) from None
            logger.warning(
                "%s: breaking the lock of process %d on %s, which no longer runs",
                lock.parent, holder[1], holder[0],
            )  # fmt: skip
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, me.encode())
        os.close(fd)
        return
    raise OutputExistsError(f"{lock.parent}: could not take the lock {lock.name}")


def _holder(lock: Path) -> tuple[str, int] | None:
    """(host, pid) recorded in a lock file (locks of earlier versions hold the pid alone)."""
    try:
        parts = lock.read_text().split()
        if len(parts) == 1:
            return socket.gethostname(), int(parts[0])
        return parts[0], int(parts[1])
    except (OSError, ValueError, IndexError):
        return None


def _stale(host: str, pid: int) -> bool:
    """Whether the process that holds a lock is gone (only knowable on this host)."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


#: What a training run writes into its directory; ``--overwrite`` removes exactly these.
RUN_OUTPUTS = (
    "wts.h5.zip", "checkpoints", "lightning_logs", "mlruns", "mlruns.db", "training.png",
)  # fmt: skip


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Check the run directory before any work, and clear an earlier run with ``overwrite``.

    A directory holding an earlier run's files (a bundle, checkpoints, logs: also those of an
    interrupted run) is refused unless the run is resumed or overwritten; ``--overwrite``
    removes exactly those files, so no old checkpoint can be mistaken for the new run's, and
    nothing else in the directory.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir}: exists and is not a directory")
    earlier = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    if resume:
        return
    if earlier and not overwrite:
        raise OutputExistsError(
            f"{run_dir}: holds an earlier run ({', '.join(earlier)}); pass --resume to continue "
            "it or --overwrite to replace it"
        )
    if earlier and is_rank_zero_process():
        for name in earlier:
            path = run_dir / name
            with os_errors(path):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        logger.info("%s: removed the earlier run (%s)", run_dir, ", ".join(earlier))


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
        # a SQLite store under the run directory: MLflow 3 deprecates its file store
        uri = (
            config.training.mlflow_tracking_uri or f"sqlite:///{(run_dir / 'mlruns.db').resolve()}"
        )
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
        out.append(EpochLog(max_time_s))
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
