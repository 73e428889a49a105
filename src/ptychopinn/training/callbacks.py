"""Lightning callbacks that keep a run's work safe.

* :class:`NonFiniteLossGuard` stops training when the loss turns NaN or Inf, before
  the bad step updates the weights and before any checkpoint of a broken model is
  written, so ``checkpoints/last.ckpt`` stays the last good state.
* :class:`GracefulShutdown` turns SIGINT / SIGTERM during training into a clean stop:
  the current step finishes, ``checkpoints/last.ckpt`` is written (resumable with
  ``--resume``) and training ends with :class:`TrainingInterruptedError`, so no bundle
  of a half-trained model is written.

Both raise a :class:`~ptychopinn.errors.PtychoPINNError` carrying ``exit_status``,
the process exit status the command line reports for it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor

from ptychopinn.errors import PtychoPINNError

logger = logging.getLogger(__name__)

#: Exit status of a run stopped by a non-finite loss (2 is a user error, 1 a crash).
EXIT_NON_FINITE = 3


class NonFiniteLossError(PtychoPINNError):
    """Training stopped because the loss or the weights became NaN or Inf."""

    exit_status = EXIT_NON_FINITE


class TrainingInterruptedError(PtychoPINNError):
    """Training stopped on a signal after saving a resumable checkpoint.

    ``exit_status`` is ``128 + signal number`` (130 for SIGINT, 143 for SIGTERM),
    the shell's convention for a process ended by that signal.
    """

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_status = 128 + signal_number


def _last_checkpoint(trainer: L.Trainer) -> str:
    path = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    return path if path and Path(path).exists() else ""


def _stopped_at(trainer: L.Trainer) -> str:
    return f"epoch {trainer.current_epoch}, step {trainer.global_step}"


class NonFiniteLossGuard(Callback):
    """Stop training with :class:`NonFiniteLossError` when a loss is NaN or Inf.

    The training loss is checked before ``backward`` (so the bad step never updates
    the weights), the validation loss after each validation batch (before
    ``ModelCheckpoint`` saves at the end of validation), and every checkpoint is
    refused if the model's parameters or buffers are not finite (BatchNorm running
    statistics are updated by the forward pass of a bad batch). A
    ``ModelCheckpoint(save_last=True)`` therefore never overwrites the last good
    ``last.ckpt``. In a distributed run the ranks agree before stopping, so none
    waits for the others in a collective.

    The check reads one scalar per step from the device (a synchronisation point).
    """

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor
    ) -> None:
        self._check(trainer, loss, "training")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self._check(trainer, loss, "validation")

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        tensors = [
            t
            for t in pl_module.state_dict().values()
            if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex())
        ]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            raise NonFiniteLossError(
                f"the model's weights are NaN or Inf at {_stopped_at(trainer)}; refusing to write "
                f"a checkpoint. {self._advice(trainer)}"
            )

    def _check(self, trainer: L.Trainer, loss: Tensor, stage: str) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            value = "NaN or Inf on another rank" if finite else str(float(loss.detach().sum()))
            raise NonFiniteLossError(
                f"{stage} loss is {value} at {_stopped_at(trainer)}: training stopped "
                f"before the weights were updated. {self._advice(trainer)}"
            )

    @staticmethod
    def _advice(trainer: L.Trainer) -> str:
        last = _last_checkpoint(trainer)
        kept = (
            f"The last good checkpoint {last} is kept. " if last else "No checkpoint was written. "
        )
        return kept + (
            "Check the data with 'ptychopinn check' and try a lower --learning_rate or --nphotons."
        )


class GracefulShutdown(Callback):
    """On SIGINT or SIGTERM during training, finish the step, save a checkpoint and stop.

    Parameters
    ----------
    checkpoint_path : where to save (default: the ``last.ckpt`` of the trainer's
        ``ModelCheckpoint(save_last=True)``, else ``default_root_dir/checkpoints/last.ckpt``)

    The handlers are installed when training starts (after Lightning's own) and the
    previous ones restored when it ends. The first signal only sets a flag; at the
    end of the current training batch (or epoch) the checkpoint is written through
    ``Trainer.save_checkpoint`` (a temporary file, then a rename) and
    :class:`TrainingInterruptedError` is raised, so ``fit`` returns before any bundle
    is written. A second SIGINT stops at once (``KeyboardInterrupt``). In a
    distributed run the ranks agree, so all stop after the same step.
    """

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint_path: str | Path | None = None):
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    # -- signal handling ---------------------------------------------------------------------
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            if signum == signal.SIGINT:
                self._restore()
                raise KeyboardInterrupt
            return
        self.received = signum
        logger.warning(
            "received %s: finishing the current step, then saving a resumable checkpoint "
            "(press Ctrl+C again to stop at once)",
            signal.Signals(signum).name,
        )

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: SIGINT/SIGTERM are not intercepted")
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    # -- Lightning hooks ---------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received = None
        self._install()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._maybe_stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_stop(trainer)  # a signal that arrived during validation

    def _maybe_stop(self, trainer: L.Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        signum = self.received if self.received is not None else signal.SIGTERM
        path = self._target(trainer)
        for callback in trainer.checkpoint_callbacks:
            # ModelCheckpoint must treat this file as its own last.ckpt on resume (else it
            # writes last-v1.ckpt beside it and --resume picks up the stale one).
            own = _own_last(callback)
            if (
                isinstance(callback, ModelCheckpoint)
                and own
                and Path(own).resolve() == path.resolve()
            ):
                callback.last_model_path = own
        save_checkpoint_atomically(trainer, path)
        self._restore()
        name = signal.Signals(signum).name
        raise TrainingInterruptedError(
            f"training interrupted by {name} at {_stopped_at(trainer)}; saved {path}: "
            "continue with --resume",
            signum,
        )

    def _target(self, trainer: L.Trainer) -> Path:
        if self.checkpoint_path is not None:
            return self.checkpoint_path
        for callback in trainer.checkpoint_callbacks:
            own = _own_last(callback)
            if own is not None:
                return Path(own)
        return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def save_checkpoint_atomically(
    trainer: L.Trainer, path: str | Path, weights_only: bool = False
) -> None:
    """Write a checkpoint under a temporary name and rename it into place (rank 0).

    A full disk or a kill during the write leaves the earlier checkpoint of that name whole
    (a truncated ``last.ckpt`` used to make ``--resume`` fail); the error names the file.
    """
    from ptychopinn.io.outputs import os_errors

    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    try:
        with os_errors(target):
            trainer.save_checkpoint(partial, weights_only)
            if trainer.is_global_zero:
                os.replace(partial, target)
    finally:
        if trainer.is_global_zero and partial.exists():
            partial.unlink()


class LastStateCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is the state after every epoch.

    Lightning 2.6.6 writes ``save_last``'s ``last.ckpt`` only in a step where a top-k
    checkpoint is written too, so after an epoch that does not improve the monitored loss
    ``last.ckpt`` stays at the best epoch, and ``--resume`` would repeat the epochs since.
    This callback writes it at every save point where its parent did not (through the
    parent's own ``_save_last_checkpoint``, so its bookkeeping of ``last_model_path``, which
    resuming relies on, stays its own). With other Lightning versions it changes nothing.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """As ModelCheckpoint's, but written atomically (:func:`save_checkpoint_atomically`)."""
        from weakref import proxy

        save_checkpoint_atomically(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger_ in trainer.loggers:
                logger_.after_save_checkpoint(proxy(self))

    def _save_last_if_missing(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _own_last(callback: Any) -> str | None:
    """The path a ``ModelCheckpoint(save_last=True)`` writes its ``last.ckpt`` to, in its spelling."""
    if not isinstance(callback, ModelCheckpoint) or not callback.save_last or not callback.dirpath:
        return None
    return os.path.join(callback.dirpath, callback.CHECKPOINT_NAME_LAST + callback.FILE_EXTENSION)
