"""Configuration: the facade configs Ptychodus builds, and the ptychopinn config they mean.

:class:`ConfigManager` holds the five facade configs of :mod:`ptycho_torch.config_params` (or,
for a loaded model, the checkpoint's exact core config) and maps them onto ptychopinn's
:class:`~ptychopinn.config.Config`; :func:`resolve_hardware` picks the accelerator, devices and
strategy that run here; :func:`facade_configs` describes a core config in facade terms.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ptycho_torch.config_params import (
    DataConfig,
    DatagenConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)
from ptychopinn.config import Config
from ptychopinn.config import ModelConfig as CoreModelConfig
from ptychopinn.config import TrainingConfig as CoreTrainingConfig
from ptychopinn.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from ptycho_torch.api.models import PtychoModel

logger = logging.getLogger(__name__)

#: Ptychodus's ``n_filters_scale`` counts from upstream's network, whose standard size is 2;
#: ptychopinn's standard size is 1 (its default network), so 2 maps to 1.
UPSTREAM_FILTERS_SCALE = 2.0

__all__ = ["ConfigManager", "facade_configs", "resolve_hardware"]


class ConfigManager:
    """The five facade configs, and the ptychopinn :class:`~ptychopinn.config.Config` they mean."""

    def __init__(
        self,
        data_config: DataConfig | None = None,
        model_config: ModelConfig | None = None,
        training_config: TrainingConfig | None = None,
        inference_config: InferenceConfig | None = None,
        datagen_config: DatagenConfig | None = None,
        core_config: Config | None = None,
    ):
        self.data_config = data_config if data_config is not None else DataConfig()
        self.model_config = model_config if model_config is not None else ModelConfig()
        self.training_config = training_config if training_config is not None else TrainingConfig()
        self.inference_config = (
            inference_config if inference_config is not None else InferenceConfig()
        )
        self.datagen_config = datagen_config if datagen_config is not None else DatagenConfig()
        #: the exact core config of a loaded model (None: derive it from the facade configs)
        self.core_config = core_config

    @classmethod
    def from_loaded_model(cls, ptycho_model: PtychoModel) -> ConfigManager:
        """The configs of a loaded model; the core config is the checkpoint's own."""
        module = ptycho_model.require_module()
        data, model, training, inference = facade_configs(module.cfg)
        return cls(
            data_config=ptycho_model.data_config or data,
            model_config=ptycho_model.model_config or model,
            training_config=ptycho_model.training_config or training,
            inference_config=ptycho_model.inference_config or inference,
            core_config=module.cfg,
        )

    def validate_arch_compatibility(self, ptycho_model: PtychoModel) -> None:
        """Raise :class:`BundleError` when the configs ask for another N or gridsize than the model."""
        m = ptycho_model.require_module().cfg.model
        asked = self.data_config
        if asked.gridsize != m.gridsize:
            raise BundleError(
                f"model was trained with gridsize = {m.gridsize}; the configs ask for {asked.gridsize}"
            )
        if self.core_config is not None and self.core_config.model.N != m.N:
            raise BundleError(
                f"model was trained with N = {m.N}; the configs ask for {self.core_config.model.N}"
            )

    def to_config(self, n: int | None = None) -> Config:
        """The ptychopinn config; ``n`` is the data's pattern size, which decides N."""
        if self.core_config is not None:
            return self.core_config
        d, m, t = self.data_config, self.model_config, self.training_config
        if n is None:
            n = int(d.N)
        elif int(d.N) != n:
            logger.warning(
                "DataConfig.N = %d but the diffraction patterns are %dx%d: using N = %d",
                d.N,
                n,
                n,
                n,
            )
        for name in ("C_model", "C_forward", "decoder_last_amp_channels"):
            value = getattr(m, name)
            if value is not None and int(value) != int(d.C):
                raise ConfigError(f"ModelConfig.{name} = {value} must equal DataConfig.C = {d.C}")
        accelerator, devices, strategy = resolve_hardware(t)
        defaults = CoreTrainingConfig()
        model = CoreModelConfig(
            N=n,
            gridsize=d.gridsize,
            n_filters_scale=float(m.n_filters_scale) / UPSTREAM_FILTERS_SCALE,
            amp_activation=m.core_amp_activation,  # type: ignore[arg-type]
            probe_mask=m.core_probe_mask,
            mode=m.core_mode,  # type: ignore[arg-type]
        )
        training = CoreTrainingConfig(
            max_epochs=int(t.epochs),
            batch_size=int(t.batch_size),
            learning_rate=float(t.learning_rate),
            scheduler=t.core_scheduler,  # type: ignore[arg-type]
            warmup_fraction=t.core_warmup_fraction or defaults.warmup_fraction,
            loss="mae" if m.core_loss == "mae" or not t.nll else "poisson",
            seed=int(t.seed),
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_workers=int(t.num_workers),
        )
        return Config(model=model, training=training)


def resolve_hardware(t: TrainingConfig) -> tuple[str, int, str]:
    """(accelerator, devices, strategy) that run here.

    ``device='cuda'`` (Ptychodus's default) without a CUDA GPU falls back to the CPU with a
    warning. A distributed strategy on a single device (``ddp_spawn`` is Ptychodus's default)
    runs in-process (``auto``): one device needs no process group, and spawning would re-import
    everything for nothing.
    """
    import torch

    device = t.core_device
    devices = max(1, int(t.n_devices))
    if device in ("cuda", "gpu"):
        if torch.cuda.is_available():
            accelerator = "gpu"
            devices = min(devices, torch.cuda.device_count())
        else:
            logger.warning(
                "TrainingConfig.device=%r but no CUDA GPU is available: using the CPU", t.device
            )
            accelerator, devices = "cpu", 1
    elif device == "mps" and not torch.backends.mps.is_available():
        logger.warning("TrainingConfig.device='mps' but MPS is not available: using the CPU")
        accelerator = "cpu"
    else:
        accelerator = device
    strategy = str(t.strategy)
    if devices == 1 and strategy.startswith("ddp"):
        logger.info("TrainingConfig.strategy=%r on one device: training in-process", strategy)
        strategy = "auto"
    return accelerator, devices, strategy


def facade_configs(
    config: Config,
) -> tuple[DataConfig, ModelConfig, TrainingConfig, InferenceConfig]:
    """Facade configs describing a core config (for a checkpoint's saved configs)."""
    m, t = config.model, config.training
    data = DataConfig(N=m.N, C=m.C, grid_size=(m.gridsize, m.gridsize))
    model = ModelConfig(
        mode=m.mode.capitalize(),
        probe_big=m.probe_big,
        loss_function="MAE" if t.loss == "mae" else "Poisson",
        amp_activation=m.amp_activation,
        n_filters_scale=m.n_filters_scale * UPSTREAM_FILTERS_SCALE,
        probe_mask=m.probe_mask,
        C_model=m.C,
        C_forward=m.C,
        decoder_last_amp_channels=m.C,
    )
    training = TrainingConfig(
        epochs=t.max_epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        scheduler=t.scheduler.capitalize(),
        warmup_epochs=round(t.warmup_fraction * t.max_epochs),
        device="cuda" if t.accelerator in ("gpu", "cuda") else t.accelerator,
        num_workers=t.num_workers,
        strategy=t.strategy,
        seed=t.seed,
    )
    return data, model, training, InferenceConfig()
