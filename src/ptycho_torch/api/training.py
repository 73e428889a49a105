"""Training: :class:`Trainer` runs :func:`ptychopinn.workflows.train` for a model and data.

Ptychodus adds Lightning callbacks through ``trainer._trainer.callbacks``
(:class:`_LightningSettings`); callbacks that cannot be pickled are left out under
``ddp_spawn`` (:func:`_picklable`), and :func:`worker_count_for` keeps data-loader workers only
where they help.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ptycho_torch.api.configs import ConfigManager
from ptychopinn.config import Config
from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.scan import ScanData

if TYPE_CHECKING:
    from ptycho_torch.api.data import PtychoDataLoader
    from ptycho_torch.api.models import PtychoModel

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "worker_count_for"]


@dataclass
class _LightningSettings:
    """What Ptychodus reaches through ``trainer._trainer``: the callbacks to add."""

    callbacks: list[Any] = field(default_factory=list)


class Trainer:
    """Runs :func:`ptychopinn.workflows.train` for a model and a data loader."""

    def __init__(
        self,
        model: PtychoModel,
        dataloader: PtychoDataLoader,
        config_manager: ConfigManager | None = None,
        orchestration: str = "lightning",
    ):
        self.model = model
        self.dataloader = dataloader
        self.config_manager = config_manager or dataloader.config_manager or ConfigManager()
        self.orchestration = orchestration
        self._trainer = _LightningSettings()
        self.run: Any = None

    @classmethod
    def _from_lightning(
        cls,
        model: PtychoModel,
        dataloader: PtychoDataLoader,
        orchestration: str = "lightning",
        config_manager: ConfigManager | None = None,
    ) -> Trainer:
        if str(orchestration).casefold() != "lightning":
            raise ConfigError(f"orchestration: expected 'lightning', got {orchestration!r}")
        return cls(model, dataloader, config_manager, orchestration)

    def train(self, orchestration: str = "lightning", experiment_name: str = "") -> Any:
        """Train; the trained module replaces ``self.model.model``. Returns the TrainingRun."""
        from ptycho_torch.lightning_utils import find_best_checkpoint
        from ptycho_torch.model import PtychoPINN_Lightning
        from ptychopinn import workflows

        scan = self.dataloader.scan
        if scan is None:
            raise DataError("Trainer.train: the data loader holds no training data")
        if self.dataloader.output_dir is None:
            raise ConfigError("Trainer.train: the data loader has no output_dir")
        config = worker_count_for(self.config_manager.to_config(n=scan.N), scan)
        logger.info(
            "training %s on %d patterns (%s): N=%d gridsize=%d, %d epochs, %s x %s%s",
            experiment_name or "ptychopinn",
            scan.n_patterns,
            scan.source,
            config.model.N,
            config.model.gridsize,
            config.training.max_epochs,
            config.training.accelerator,
            config.training.devices,
            f", strategy {config.training.strategy}" if config.training.strategy != "auto" else "",
        )
        kwargs: dict[str, Any] = {"val_scan": self.dataloader.val_scan, "progress": False}
        callbacks = list(self._trainer.callbacks)
        t = config.training
        if callbacks and t.strategy.startswith("ddp_spawn") and t.devices not in (1, "1"):
            callbacks = [cb for cb in callbacks if _picklable(cb)]  # sent to spawned ranks
        if callbacks:
            if "callbacks" in inspect.signature(workflows.train).parameters:
                kwargs["callbacks"] = callbacks
            else:
                logger.info("this ptychopinn cannot run extra Lightning callbacks; skipping them")
        self.run = workflows.train(config, scan, self.dataloader.output_dir, **kwargs)
        best = find_best_checkpoint(self.run.run_dir)
        if best is not None:
            self.model.model = PtychoPINN_Lightning.load_from_checkpoint(best)
        return self.run


def _picklable(callback: Any) -> bool:
    import pickle

    try:
        pickle.dumps(callback)
    except Exception:
        logger.info("ddp_spawn: leaving out %s, which cannot be sent to the ranks", callback)
        return False
    return True


def worker_count_for(config: Config, scan: ScanData) -> Config:
    """Data-loader workers only where they help: a scan streamed from disk, in a forking process.

    An in-memory scan is served by tensor indexing, so workers only add start-up time; and in
    the process Ptychodus spawns, workers are spawned too (each re-imports torch and receives a
    copy of the data), which made a 25-epoch run many times slower. HDF5-backed scans cannot be
    sent to spawned workers at all.
    """
    import multiprocessing

    workers = config.training.num_workers
    in_memory = isinstance(scan.diffraction, np.ndarray)
    if workers == 0 or (not in_memory and multiprocessing.get_start_method() == "fork"):
        return config
    logger.info(
        "num_workers=%d: loading in the training process (%s)",
        workers,
        "the scan is in memory" if in_memory else "workers would be spawned, not forked",
    )
    return config.replace(training=dataclasses.replace(config.training, num_workers=0))
