"""What a training run tells its user while it runs.

* :class:`WallTimeEstimate` times a few optimiser steps at the start and says how long the
  run will take.
* :class:`EpochLog` writes one line per epoch (losses, patterns/s, elapsed, remaining): the
  progress report when the output is not a terminal (a log file gets no carriage-return
  updates), next to Lightning's live bar on a terminal.
* :class:`TrainingHistory` keeps the losses and R-factors of every epoch and draws them
  into ``RUN/training.png`` at the end (has it converged?).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

logger = logging.getLogger("ptychopinn")

#: Steps skipped before timing (the first ones pay for allocations and caches) and timed.
WARMUP_STEPS = 2
TIMED_STEPS = 6


def format_duration(seconds: float) -> str:
    """``2 h 05 min``, ``6 min 40 s``, ``12 s``.

    >>> format_duration(7500), format_duration(400), format_duration(12.4)
    ('2 h 05 min', '6 min 40 s', '12 s')
    """
    seconds = max(0.0, float(seconds))
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.0f} s"


def _total_steps(trainer: L.Trainer, max_time_s: float | None, per_step_s: float) -> int:
    total = int(trainer.estimated_stepping_batches)
    if max_time_s is not None:
        total = min(total, int(max_time_s / max(per_step_s, 1e-9)))
    return total


class WallTimeEstimate(Callback):
    """After a few timed steps, log the expected training time of the whole run."""

    def __init__(self, max_time_s: float | None = None):
        self.max_time_s = max_time_s
        self._start: float | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        done = trainer.global_step
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if self._start is None:
            if done >= WARMUP_STEPS:
                self._start, self._first = time.perf_counter(), done
            return
        if done - self._first == TIMED_STEPS:
            per_step = (time.perf_counter() - self._start) / TIMED_STEPS
            total = _total_steps(trainer, self.max_time_s, per_step)
            logger.info(
                "about %s of training (%.0f ms per step over %d steps, %d steps to go)",
                format_duration(per_step * max(0, total - done)),
                per_step * 1e3,
                TIMED_STEPS,
                max(0, total - done),
            )


class EpochLog(Callback):
    """One log line per epoch: losses, throughput, elapsed and remaining time."""

    def __init__(self, max_time_s: float | None = None) -> None:
        self._start = 0.0
        self.max_time_s = max_time_s

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        epoch, epochs = trainer.current_epoch + 1, trainer.max_epochs or 0
        elapsed = time.perf_counter() - self._start
        parts = [f"epoch {epoch}/{epochs}"]
        for key in ("train_loss", "val_loss"):
            if key in metrics:
                parts.append(f"{key} {float(metrics[key]):.6g}")
        if "val_r_factor" in metrics:
            parts.append(f"val R-factor {float(metrics['val_r_factor']):.4f}")
        if "patterns_per_s" in metrics:
            parts.append(f"{float(metrics['patterns_per_s']):.0f} patterns/s")
        remaining = elapsed / epoch * max(0, epochs - epoch) if epoch else 0.0
        if self.max_time_s is not None:  # the run ends at max_time if that comes first
            remaining = min(remaining, max(0.0, self.max_time_s - elapsed))
        parts.append(f"{format_duration(elapsed)} elapsed, {format_duration(remaining)} to go")
        logger.info(", ".join(parts))


#: What :class:`TrainingHistory` keeps of each epoch.
HISTORY_KEYS = ("train_loss", "val_loss", "train_r_factor", "val_r_factor")


class TrainingHistory(Callback):
    """The losses and R-factors of every epoch; ``RUN/training.png`` at the end of training."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.epochs: list[int] = []
        self.values: dict[str, list[float]] = {k: [] for k in HISTORY_KEYS}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        self.epochs.append(trainer.current_epoch + 1)
        for key in HISTORY_KEYS:
            self.values[key].append(float(metrics[key]) if key in metrics else float("nan"))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.epochs:
            plot_history(self.run_dir / "training.png", self.epochs, self.values)


def plot_history(path: Path, epochs: list[int], values: dict[str, list[float]]) -> None:
    """Loss and R-factor against epoch, training and validation, in one PNG (atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from ptychopinn.io.atomic import atomic_path

    fig = Figure(figsize=(8, 3.2), layout="constrained")
    loss_ax, r_ax = fig.subplots(1, 2)
    for ax, kind, label in (
        (loss_ax, "loss", "loss (Poisson NLL)"),
        (r_ax, "r_factor", "R-factor"),
    ):
        for stage, style in (("train", "-"), ("val", "o-")):
            ys = values.get(f"{stage}_{kind}", [])
            if any(y == y for y in ys):  # not all NaN
                ax.plot(
                    epochs,
                    ys,
                    style,
                    markersize=3,
                    label="training" if stage == "train" else "validation",
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
