"""The LightningModule: network + forward model + likelihood, one shared step."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ptychopinn.config import Config, migrate_saved_config
from ptychopinn.data.dataset import Normalization
from ptychopinn.models import build_network, migrate_state_dict, prediction_support
from ptychopinn.models.cnn import object_patches
from ptychopinn.models.diagnostics import COLLAPSE_MIN_STEPS, COLLAPSE_THRESHOLD, output_variation
from ptychopinn.physics.forward import ForwardModel
from ptychopinn.physics.functional import (
    amplitude_mae,
    normalize_probe,
    poisson_nll,
    r_factor,
    with_background,
)

logger = logging.getLogger(__name__)


class PtychoPINNModule(L.LightningModule):
    """Trains the network of the config through the physics (or on labels, supervised).

    A batch holds overlap groups of ``P = K * C`` patterns: ``K`` network inputs of ``C``
    channels each. The network predicts each input's ``C`` patches; the forward model merges
    the group's ``P`` patches into one object before the likelihood of every pattern.

    Parameters
    ----------
    config : ``Config.to_dict()`` (plain data, saved in checkpoints)
    normalization : ``Normalization.to_dict()``
    n_probe_modes : number of incoherent probe modes
    probe : (P, N, N) complex raw probe (not a hyperparameter: lives in the state dict)
    good_pixels : (N, N) 0/1 detector mask of the likelihood (the data's ``bad_pixels`` are
        0); not saved: a module restored from a checkpoint counts every pixel
    background : (N, N) detector background of the likelihood in normalised intensity units
        (:func:`~ptychopinn.inference.background_tensor`); not saved, as ``good_pixels``
    """

    def __init__(
        self,
        config: dict[str, Any],
        normalization: dict[str, Any],
        n_probe_modes: int = 1,
        probe: Tensor | None = None,
        good_pixels: Tensor | None = None,
        background: Tensor | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["probe", "good_pixels", "background"])
        self.cfg = Config.from_dict(migrate_saved_config(config))
        self.normalization = Normalization.from_dict(normalization)
        m = self.cfg.model
        self.net = build_network(m)
        # channels-last convolutions: same values, 1.1x faster on a CPU in float32 and 1.5x
        # with bf16-mixed (torch's stubs lack the memory_format overload of Module.to)
        self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        support = prediction_support(m)
        if probe is None:  # restored from a checkpoint: the state dict fills it
            initial = torch.zeros(n_probe_modes, m.N, m.N, dtype=torch.complex64)
        else:
            initial = normalize_probe(probe.to(torch.complex64))
        trainable = self.cfg.training.probe_trainable and m.mode == "unsupervised"
        self.physics = ForwardModel(initial, support, m.probe_mask, m.merge_weights, trainable)
        self.good_pixels: Tensor | None
        self.register_buffer("good_pixels", good_pixels, persistent=False)
        self.background: Tensor | None
        self.register_buffer("background", background, persistent=False)
        self._epoch_start = 0.0
        self._epoch_patterns = 0
        self._train_sums: Tensor | None = None  # (loss, R-factor) summed over the epoch's batches
        self._train_count = 0.0

    def forward(self, amplitude: Tensor) -> Tensor:
        """Complex object patches (B, P, N, N) from normalised amplitudes (B, P, N, N).

        The P patterns of a group are ``P / C`` network inputs of ``C`` channels. Complex64
        under bf16-mixed autocast too (see :func:`object_patches`), so the physics and the
        likelihood stay in float32.
        """
        b, p, n, _ = amplitude.shape
        c = self.cfg.model.C
        x = amplitude.reshape(b * p // c, c, n, n).contiguous(memory_format=torch.channels_last)
        # the network sees the probe as an input; a learned probe learns through the physics
        probe = self.physics.probe.detach()
        patches = object_patches(*self.net(x, probe))  # (B * K, C, N, N)
        return patches.reshape(b, p, n, n)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Checkpoints of earlier versions name some weights differently."""
        checkpoint["state_dict"] = migrate_state_dict(checkpoint["state_dict"], "net.")

    def _common_step(self, batch: dict[str, Tensor], stage: str) -> tuple[Tensor, Tensor | None]:
        """The loss of a batch and its amplitude R-factor (None when supervised); the
        validation metrics logged (the training ones once per epoch, :meth:`training_step`)."""
        x = batch["amplitude"]  # (B, C, N, N)
        patches = self(x)  # (B, C, N, N) complex
        r: Tensor | None = None
        if self.cfg.model.mode == "supervised":
            support = self.physics.support
            loss = ((patches - batch["patches"]).abs() * support).sum() / (
                support.sum() * patches.shape[0] * patches.shape[1]
            )
        else:
            loss, predicted = self.likelihood(patches, x, batch["offsets"])
            r = r_factor(predicted.detach(), x, self.good_pixels)
        if stage != "train":
            batch_size = x.shape[0]
            # mean over ranks (one scalar all-reduce per step under DDP)
            self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
            if r is not None:
                self.log(f"{stage}_r_factor", r, batch_size=batch_size, sync_dist=True)
            variation = output_variation(patches.detach(), self.physics.support)
            self.log(f"{stage}_output_variation", variation, batch_size=batch_size, sync_dist=True)
        return loss, r

    def likelihood(self, patches: Tensor, x: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        """The unsupervised loss of object ``patches`` (B, P, N, N) against the measured
        amplitudes ``x`` (B, P, N, N) of groups with ``offsets`` (B, P, 2), and the predicted
        amplitudes: the group's patches merged on one object, diffracted, the background
        added; bad pixels left out."""
        predicted = with_background(self.physics(patches, offsets), self.background)
        if self.cfg.training.loss == "poisson":
            loss = poisson_nll(
                predicted, x, self.normalization.intensity_scale, mask=self.good_pixels
            )
        else:
            loss = amplitude_mae(predicted, x, mask=self.good_pixels)
        return loss, predicted

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        amplitude = batch["amplitude"]
        self._epoch_patterns += amplitude.shape[0] * amplitude.shape[1]
        loss, r = self._common_step(batch, "train")
        # the epoch's means, summed on the device (a log call per step costs ~1 ms on a CPU,
        # 2-3 % of a step); logged at the epoch's last batch
        b = float(amplitude.shape[0])
        sums = torch.stack([loss.detach() * b, (r if r is not None else loss.detach()) * b])
        self._train_sums = sums if self._train_sums is None else self._train_sums + sums
        self._train_count += b
        if batch_idx + 1 >= self.trainer.num_training_batches:
            self._log_training_epoch()
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._common_step(batch, "val")[0]

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_patterns = 0
        self._train_sums, self._train_count = None, 0.0

    def _log_training_epoch(self) -> None:
        """The epoch's mean training loss and R-factor, and its throughput (validation left
        out); every rank trains on its own share of the batches: the throughput is their sum."""
        if self._train_sums is None:
            return
        loss, r = self._train_sums / self._train_count
        self.log("train_loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        if self.cfg.model.mode != "supervised":
            self.log("train_r_factor", r, on_step=False, on_epoch=True, sync_dist=True)
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        self.log(
            "patterns_per_s",
            self._epoch_patterns / elapsed,
            prog_bar=True,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            reduce_fx="sum",
        )
        self._train_sums = None  # logged

    def on_train_epoch_end(self) -> None:
        self._log_training_epoch()  # an epoch cut short (max_time) has not logged its means

    def on_validation_epoch_end(self) -> None:
        variation = self.trainer.callback_metrics.get("val_output_variation")
        if (
            variation is not None
            and float(variation) < COLLAPSE_THRESHOLD
            and not self.trainer.sanity_checking
            and self.trainer.global_step >= COLLAPSE_MIN_STEPS
            and self.trainer.is_global_zero
        ):
            logger.warning(
                "epoch %d (step %d): the model predicts nearly the same patch for every pattern "
                "(output variation %.2e < %.0e): training has collapsed",
                self.current_epoch,
                self.trainer.global_step,
                float(variation),
                COLLAPSE_THRESHOLD,
            )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Set this step's learning rate: warmup, then constant or cosine (plateau: its own)."""
        t = self.cfg.training
        total = max(1, int(self.trainer.estimated_stepping_batches))
        step = self.trainer.global_step
        done, next_done = step / total, (step + 1) / total
        if t.max_time is not None:  # the run ends at max_time if that comes first
            elapsed = _timer_elapsed_s(self.trainer) / t.max_time
            done, next_done = max(done, elapsed), max(next_done, elapsed)
        if t.scheduler == "plateau" and done >= t.warmup_fraction:
            return  # ReduceLROnPlateau owns the rate after the warmup
        factor = lr_factor(done, next_done, t.warmup_fraction, t.scheduler)
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = group.get("base_lr", t.learning_rate) * factor

    def configure_optimizers(self) -> Any:
        t = self.cfg.training
        # the fused kernel: one pass over all parameters (5-7 % faster steps at batch 2 on a CPU)
        # (not for a complex parameter: a trainable probe takes the unfused path)
        fused = self.device.type in ("cpu", "cuda") and not any(
            p.is_complex() for p in self.parameters()
        )
        probe = [p for name, p in self.named_parameters() if name == "physics.probe"]
        others = [p for name, p in self.named_parameters() if name != "physics.probe"]
        groups = [{"params": others, "base_lr": t.learning_rate}]
        if probe:  # a trainable probe steps at its own rate
            groups.append(
                {"params": probe, "lr": t.probe_learning_rate, "base_lr": t.probe_learning_rate}
            )
        optimizer = torch.optim.Adam(
            groups, lr=t.learning_rate, betas=(0.9, t.adam_beta2), fused=fused
        )
        if t.scheduler != "plateau":  # the rate is set per step (on_train_batch_start)
            return optimizer
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
        datamodule = getattr(self.trainer, "datamodule", None)
        has_val = getattr(datamodule, "val_set", None) is not None
        monitor = "val_loss" if has_val else "train_loss"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": monitor}}


def _timer_elapsed_s(trainer: L.Trainer) -> float:
    """Training time so far as Lightning's Timer counts it (restored on --resume)."""
    from lightning.pytorch.callbacks import Timer

    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, Timer):
            return float(callback.time_elapsed("train"))
    return 0.0


def lr_factor(done: float, next_done: float, warmup: float, scheduler: str) -> float:
    """Learning-rate multiplier of a step, from the fraction of the run done before and after it.

    Rises linearly over the first ``warmup`` of the run (``next_done / warmup``, so the first
    step already moves), then stays at 1 (``constant``) or falls as half a cosine to 0 at the
    end of the run (``cosine``). Six steps, warmup a third of them:

    >>> [round(lr_factor(s / 6, (s + 1) / 6, 1 / 3, "cosine"), 2) for s in range(7)]
    [0.5, 1.0, 1.0, 0.85, 0.5, 0.15, 0.0]
    """
    if done < warmup:
        return min(1.0, next_done / warmup)
    if scheduler != "cosine":
        return 1.0
    progress = min(1.0, (done - warmup) / max(1e-12, 1.0 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
