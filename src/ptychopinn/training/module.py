"""The LightningModule: network + forward model + likelihood, one shared step."""

from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import lightning as L
import torch
from torch import Tensor

from ptychopinn.config import Config
from ptychopinn.data.dataset import Normalization
from ptychopinn.models import build_network
from ptychopinn.models.cnn import object_patches
from ptychopinn.models.diagnostics import COLLAPSE_MIN_STEPS, COLLAPSE_THRESHOLD, output_variation
from ptychopinn.physics.forward import ForwardModel
from ptychopinn.physics.functional import (
    amplitude_mae,
    normalize_probe,
    poisson_nll,
    square_support,
)

logger = logging.getLogger(__name__)


class PtychoPINNModule(L.LightningModule):
    """Trains the network of the config through the physics (or on labels, supervised).

    Parameters
    ----------
    config : ``Config.to_dict()`` (plain data, saved in checkpoints)
    normalization : ``Normalization.to_dict()``
    n_probe_modes : number of incoherent probe modes
    probe : (P, N, N) complex raw probe (not a hyperparameter: lives in the state dict)
    """

    def __init__(
        self,
        config: dict[str, Any],
        normalization: dict[str, Any],
        n_probe_modes: int = 1,
        probe: Tensor | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["probe"])
        self.cfg = Config.from_dict(config)
        self.normalization = Normalization.from_dict(normalization)
        m = self.cfg.model
        self.net = build_network(m)
        # channels-last convolutions: same values, 1.1x faster on a CPU in float32 and 1.5x
        # with bf16-mixed (torch's stubs lack the memory_format overload of Module.to)
        self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        support = square_support(m.N, m.support_px)
        if probe is None:  # restored from a checkpoint: the state dict fills it
            initial = torch.zeros(n_probe_modes, m.N, m.N, dtype=torch.complex64)
        else:
            initial = normalize_probe(probe.to(torch.complex64))
        self.physics = ForwardModel(initial, support, m.probe_mask, m.merge_weights)
        self._epoch_start = 0.0
        self._epoch_patterns = 0

    def forward(self, amplitude: Tensor) -> Tensor:
        """Complex object patches (B, C, N, N) from normalised amplitudes (B, C, N, N).

        Complex64 under bf16-mixed autocast too (see :func:`object_patches`), so the physics
        and the likelihood stay in float32.
        """
        x = amplitude.contiguous(memory_format=torch.channels_last)
        return object_patches(*self.net(x, self.physics.probe))

    def _common_step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        x = batch["amplitude"]  # (B, C, N, N)
        patches = self(x)  # (B, C, N, N) complex
        t = self.cfg.training
        if self.cfg.model.mode == "supervised":
            support = self.physics.support
            loss = ((patches - batch["patches"]).abs() * support).sum() / (
                support.sum() * patches.shape[0] * patches.shape[1]
            )
        else:
            predicted = self.physics(patches, batch["offsets"])  # (B, C, N, N)
            if t.loss == "poisson":
                loss = poisson_nll(predicted, x, self.normalization.intensity_scale)
            else:
                loss = amplitude_mae(predicted, x)
        batch_size = x.shape[0]
        # mean over ranks (one scalar all-reduce per step under DDP)
        self.log(f"{stage}_loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=True)
        if stage != "train":
            variation = output_variation(patches.detach(), self.physics.support)
            self.log(f"{stage}_output_variation", variation, batch_size=batch_size, sync_dist=True)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        self._epoch_patterns += batch["amplitude"].shape[0] * batch["amplitude"].shape[1]
        return self._common_step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._common_step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_patterns = 0

    def on_train_epoch_end(self) -> None:
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        # every rank trains on its own share of the batches: the throughput is their sum
        self.log(
            "patterns_per_s",
            self._epoch_patterns / elapsed,
            prog_bar=True,
            sync_dist=True,
            reduce_fx="sum",
        )

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

    def configure_optimizers(self) -> Any:
        t = self.cfg.training
        # the fused kernel: one pass over all parameters (5-7 % faster steps at batch 2 on a CPU)
        fused = self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.Adam(
            self.parameters(), lr=t.learning_rate, betas=(0.9, t.adam_beta2), fused=fused
        )
        if t.scheduler == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=3)
            datamodule = getattr(self.trainer, "datamodule", None)
            has_val = getattr(datamodule, "val_set", None) is not None
            monitor = "val_loss" if has_val else "train_loss"
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": plateau, "monitor": monitor},
            }
        if t.scheduler == "constant" and t.warmup_fraction == 0:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(t.warmup_fraction * total))
        factor = functools.partial(
            lr_factor, warmup=warmup, total=total, cosine=t.scheduler == "cosine"
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def lr_factor(step: int, warmup: int, total: int, cosine: bool) -> float:
    """Learning-rate multiplier at optimiser step ``step`` of ``total``.

    Rises linearly over the first ``warmup`` steps (1/warmup at step 0, 1 at step warmup),
    then stays at 1 or, with ``cosine``, falls as half a cosine to 0 at step ``total``.

    >>> [round(lr_factor(s, 2, 6, True), 2) for s in range(7)]
    [0.5, 1.0, 1.0, 0.85, 0.5, 0.15, 0.0]
    """
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
