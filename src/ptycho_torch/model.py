"""``PtychoPINN_Lightning``: the LightningModule Ptychodus 1.7.0 loads from a ``model.ckpt``.

A Ptychodus "model.ckpt" is a plain Lightning checkpoint of
:class:`ptychopinn.training.module.PtychoPINNModule`, the one ``ptychopinn train`` writes to
``RUN/checkpoints/`` (its hyperparameters hold the whole config and the normalisation, its
state dict the weights and the forward model's probe). A bundle ``wts.h5.zip`` renamed to
``model.ckpt`` loads as well. Loading never unpickles code: ``torch.load(weights_only=True)``
or the bundle's safetensors.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ptychopinn.bundle import Bundle, load_bundle
from ptychopinn.errors import BundleError
from ptychopinn.models import migrate_state_dict
from ptychopinn.training.module import PtychoPINNModule

logger = logging.getLogger(__name__)

__all__ = ["PtychoPINN_Lightning", "is_bundle"]


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """True for a ptychopinn bundle (a zip with ``manifest.json``), whatever its name."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as zf:
        return "manifest.json" in zf.namelist()


class PtychoPINN_Lightning(PtychoPINNModule):  # noqa: N801 - the name Ptychodus imports
    """:class:`PtychoPINNModule` under the name and loader Ptychodus uses.

    The constructor is the core module's, so checkpoints of either class load into either.
    """

    #: Metrics Ptychodus's loss collector reads from ``trainer.callback_metrics``.
    loss_name = "train_loss"
    val_loss_name = "val_loss"

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike[str],
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        *,
        model_config: Any = None,
        data_config: Any = None,
        training_config: Any = None,
        inference_config: Any = None,
        **kwargs: Any,
    ) -> PtychoPINN_Lightning:
        """Load a checkpoint (or a bundle) safely and strictly.

        The configs Ptychodus passes are the ones extracted from this same file
        (:meth:`PtychoModel._extract_configs_from_checkpoint
        <ptycho_torch.api.base_api.PtychoModel._extract_configs_from_checkpoint>`); the model is
        rebuilt from the file's own config, and the passed configs are checked against it.
        """
        path = Path(checkpoint_path)
        if is_bundle(path):
            module = cls.from_bundle(load_bundle(path))
        else:
            hparams, state = read_checkpoint(path)
            module = cls(**hparams)
            try:
                module.load_state_dict(migrate_state_dict(state, "net."), strict=True)
            except RuntimeError as exc:
                raise BundleError(
                    f"{path}: weights do not fit the checkpoint's config: {exc}"
                ) from exc
        if data_config is not None:
            m = module.cfg.model
            if int(data_config.C) != m.C:
                raise BundleError(
                    f"{path}: checkpoint has C = {m.C} channels; data_config asks for {data_config.C}"
                )
        ignored = {k: v for k, v in kwargs.items() if v is not None}
        if ignored or hparams_file is not None or strict is False:
            logger.info(
                "load_from_checkpoint: ignoring %s", sorted(ignored) or "hparams_file/strict"
            )
        if map_location is not None and not callable(map_location):
            module.to(map_location if not isinstance(map_location, dict) else "cpu")
        return module.eval()

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> PtychoPINN_Lightning:
        """The module of a loaded bundle (weights and forward-model probe copied)."""
        module = cls(
            bundle.config.to_dict(),
            bundle.normalization.to_dict(),
            n_probe_modes=int(bundle.probe.shape[0]),
        )
        module.net.load_state_dict(bundle.net.state_dict(), strict=True)
        module.physics.probe.copy_(bundle.probe.detach().cpu())
        return module

    def to_bundle(self) -> Bundle:
        """A :class:`~ptychopinn.bundle.Bundle` for :func:`ptychopinn.inference.reconstruct`."""
        from ptychopinn import __version__

        manifest = {
            "format": "ptychopinn-bundle",
            "backend": "pytorch",
            "package_version": __version__,
            "source": "ptycho_torch checkpoint",
        }
        return Bundle(self.cfg, self.normalization, self.net.eval(), self.physics.probe, manifest)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(hyperparameters, state dict) of a ptychopinn Lightning checkpoint, without unpickling code.

    Raises
    ------
    BundleError
        Missing, unreadable or foreign checkpoints.
    """
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: checkpoint not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of damaged or foreign files
        raise BundleError(
            f"{p}: not a readable ptychopinn checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise BundleError(f"{p}: not a Lightning checkpoint (no 'state_dict')")
    hparams = ckpt.get("hyper_parameters") or {}
    if not {"config", "normalization"} <= set(hparams):
        raise BundleError(
            f"{p}: checkpoint was not written by ptychopinn (hyper_parameters hold "
            f"{sorted(hparams)}, expected 'config' and 'normalization')"
        )
    keep = {k: hparams[k] for k in ("config", "normalization", "n_probe_modes") if k in hparams}
    return keep, ckpt["state_dict"]
