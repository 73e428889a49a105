"""The model: :class:`PtychoModel`, a Lightning module and the facade configs it was built from.

It loads checkpoints and bundles (:meth:`PtychoModel._extract_configs_from_checkpoint`,
:meth:`PtychoModel.load`) and makes the untrained model that :class:`~.training.Trainer` trains
(:meth:`PtychoModel._new_model`).
"""

from __future__ import annotations

import os
from typing import Any

from ptycho_torch.api.configs import ConfigManager, facade_configs
from ptycho_torch.config_params import (
    DataConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)
from ptychopinn.config import Config, migrate_saved_config
from ptychopinn.errors import BundleError, ConfigError

__all__ = ["PtychoModel"]


class PtychoModel:
    """A model and the configs it was built from.

    ``model`` is a :class:`~ptycho_torch.model.PtychoPINN_Lightning` once loaded or trained; a
    model made by :meth:`_new_model` holds the class until :meth:`Trainer.train` replaces it by
    the trained module.
    """

    def __init__(
        self,
        model_config: ModelConfig | None = None,
        data_config: DataConfig | None = None,
        training_config: TrainingConfig | None = None,
        inference_config: InferenceConfig | None = None,
        model: Any = None,
    ):
        self.model_config = model_config
        self.data_config = data_config
        self.training_config = training_config
        self.inference_config = inference_config
        self.model = model

    def require_module(self) -> Any:
        """The loaded or trained LightningModule."""
        from ptychopinn.training.module import PtychoPINNModule

        if not isinstance(self.model, PtychoPINNModule):
            raise BundleError("PtychoModel: no trained model yet (load a checkpoint or train)")
        return self.model

    @staticmethod
    def _extract_configs_from_checkpoint(
        checkpoint_path: str | os.PathLike[str],
    ) -> tuple[DataConfig, ModelConfig, TrainingConfig, InferenceConfig]:
        """(data, model, training, inference) configs of a checkpoint or bundle."""
        from ptycho_torch.model import is_bundle, read_checkpoint

        if is_bundle(checkpoint_path):
            from ptychopinn.bundle import load_bundle

            config = load_bundle(checkpoint_path).config
        else:
            hparams, _ = read_checkpoint(checkpoint_path)
            try:
                config = Config.from_dict(migrate_saved_config(hparams["config"]))
            except (ConfigError, TypeError) as exc:
                raise BundleError(f"{checkpoint_path}: config: {exc}") from exc
        return facade_configs(config)

    @classmethod
    def _new_model(
        cls, model: Any = None, config_manager: ConfigManager | None = None
    ) -> PtychoModel:
        """An untrained model for ``config_manager``; ``model`` is the LightningModule class."""
        from ptycho_torch.model import PtychoPINN_Lightning

        cm = config_manager if config_manager is not None else ConfigManager()
        return cls(
            model_config=cm.model_config,
            data_config=cm.data_config,
            training_config=cm.training_config,
            inference_config=cm.inference_config,
            model=model if model is not None else PtychoPINN_Lightning,
        )

    @classmethod
    def load(cls, checkpoint_path: str | os.PathLike[str]) -> PtychoModel:
        """Convenience: configs and module of a checkpoint (or bundle) in one call."""
        from ptycho_torch.model import PtychoPINN_Lightning

        data, model, training, inference = cls._extract_configs_from_checkpoint(checkpoint_path)
        module = PtychoPINN_Lightning.load_from_checkpoint(checkpoint_path)
        return cls(model, data, training, inference, module)
