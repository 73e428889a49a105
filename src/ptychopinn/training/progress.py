"""What a training run tells its user while it runs.

* :class:`WallTimeEstimate` times a few optimiser steps at the start and says how long the
  run will take.
* :class:`EpochLog` writes one line per epoch (losses, patterns/s, elapsed, remaining): the
  progress report when the output is not a terminal (a log file gets no carriage-return
  updates), next to Lightning's live bar on a terminal.
"""

from __future__ import annotations

import logging
import time
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

    def __init__(self) -> None:
        self._start = 0.0

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
        if "patterns_per_s" in metrics:
            parts.append(f"{float(metrics['patterns_per_s']):.0f} patterns/s")
        remaining = elapsed / epoch * max(0, epochs - epoch) if epoch else 0.0
        parts.append(f"{format_duration(elapsed)} elapsed, {format_duration(remaining)} to go")
        logger.info(", ".join(parts))
