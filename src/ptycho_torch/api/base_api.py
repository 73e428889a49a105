"""The API Ptychodus 1.7.0 drives (``ptycho_torch.api.base_api``), as adapters over ptychopinn.

Call sites in ``ptychodus/model/ptychopinn_torch/_subprocess.py`` (each runs in a spawned
process):

training (``run_train``)::

    ConfigManager(data_config=, model_config=, training_config=, inference_config=,
                  datagen_config=)
    PtychoDataLoader(data_dir=IN, config_manager=, data_format=DataloaderFormats(
                     'lightning_only_module'), output_dir=OUT);  data_loader.output_dir
    PtychoModel._new_model(model=PtychoPINN_Lightning, config_manager=)
    model.model.loss_name, model.model.val_loss_name
    Trainer._from_lightning(model=, dataloader=, orchestration='lightning', config_manager=)
    trainer._trainer.callbacks.append(callback);  trainer.train(orchestration=, experiment_name=)
    find_best_checkpoint(Path(data_loader.output_dir))

reconstruction (``run_reconstruct``)::

    PtychoModel._extract_configs_from_checkpoint(str(path)) -> (data, model, training, inference)
    PtychoModel(model_config=, data_config=, training_config=, inference_config=)
    PtychoPINN_Lightning.load_from_checkpoint(path, model_config=, data_config=,
                                              training_config=, inference_config=)
    ConfigManager.from_loaded_model(ptycho_model);  .validate_arch_compatibility(ptycho_model)
    config_manager.model_config.mode   (compared with 'Unsupervised' / 'Supervised')
    InferenceEngine(config_manager=, ptycho_model=)
    PtychoDataLoader.from_np(diff_patterns=, probe=, positions=, config_manager=)
    numpy.asarray(inference_engine.predict_and_stitch(data_loader))  -> complex (H, W)

Conventions at this boundary are Ptychodus's: diffraction are counts of any dtype, the probe a
mode stack (modes, H, W), positions (M, 2) (y, x) in object pixels with the probe centred on
its pixel (H - 1) / 2 (also in the NPZ training files Ptychodus exports). They are converted
with :func:`ptychopinn.io.ptychodus_files.center_offset_px`.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
from ptychopinn.errors import BundleError, ConfigError, DataError
from ptychopinn.io.ptychodus_files import center_offset_px
from ptychopinn.io.scan import ScanData

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigManager",
    "DataloaderFormats",
    "InferenceEngine",
    "PtychoDataLoader",
    "PtychoModel",
    "Trainer",
]


class DataloaderFormats(enum.Enum):
    """How training data are served; both build ptychopinn's Lightning data module."""

    LIGHTNING_ONLY_MODULE = "lightning_only_module"
    LIGHTNING_MODULE = "lightning_module"


# -- configuration -------------------------------------------------------------------------


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
        model = CoreModelConfig(
            N=n,
            gridsize=d.gridsize,
            n_filters_scale=float(m.n_filters_scale),
            amp_activation=m.core_amp_activation,  # type: ignore[arg-type]
            probe_big=bool(m.probe_big),
            probe_mask=m.core_probe_mask,
            mode=m.core_mode,  # type: ignore[arg-type]
        )
        training = CoreTrainingConfig(
            max_epochs=int(t.epochs),
            batch_size=int(t.batch_size),
            learning_rate=float(t.learning_rate),
            scheduler=t.core_scheduler,  # type: ignore[arg-type]
            loss="mae" if m.core_loss == "mae" or not t.nll else "poisson",
            seed=int(t.seed),
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_workers=int(t.num_workers),
            diffraction_units="counts",
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
        n_filters_scale=m.n_filters_scale,
        probe_mask=m.probe_mask,
        C_model=m.C,
        C_forward=m.C,
        decoder_last_amp_channels=m.C,
    )
    training = TrainingConfig(
        epochs=t.max_epochs,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        scheduler="Cosine" if t.scheduler == "cosine" else "Default",
        device="cuda" if t.accelerator in ("gpu", "cuda") else t.accelerator,
        num_workers=t.num_workers,
        strategy=t.strategy,
        seed=t.seed,
    )
    return data, model, training, InferenceConfig()


# -- model ---------------------------------------------------------------------------------


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
                config = Config.from_dict(hparams["config"])
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


# -- data ----------------------------------------------------------------------------------


def _new_run_dir(output_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = output_dir / f"run_{stamp}"
    k = 1
    while run_dir.exists():
        run_dir = output_dir / f"run_{stamp}_{k}"
        k += 1
    return run_dir


def _clip_counts(diff: np.ndarray, source: str) -> np.ndarray:
    """Counts may dip below zero after Ptychodus's bad-pixel inpainting: clip them at 0."""
    if diff.dtype.kind == "f":
        negative = int(np.count_nonzero(diff < 0))
        if negative:
            logger.info("%s: clipping %d negative (inpainted) values to 0", source, negative)
            diff = np.clip(diff, 0, None)
    return diff


def read_training_file(path: Path) -> ScanData:
    """A training NPZ exported by Ptychodus (Ptychodus's position convention) or a product pair."""
    from ptychopinn.io.npz import load_npz_arrays, scan_from_arrays
    from ptychopinn.io.ptychodus_files import read_scan

    if path.suffix in (".h5", ".hdf5"):
        return read_scan(path)
    arrays = load_npz_arrays(path)
    key = "diffraction" if "diffraction" in arrays else "diff3d"
    if key in arrays:
        diff = np.asarray(arrays[key])
        arrays[key] = _clip_counts(diff, str(path))
        if "xcoords" in arrays and diff.ndim == 3:
            n = int(diff.shape[-1])
            for name in ("xcoords", "ycoords", "xcoords_start", "ycoords_start"):
                if name in arrays:
                    arrays[name] = np.asarray(arrays[name], dtype=np.float64) + center_offset_px(n)
    return scan_from_arrays(arrays, str(path), "counts")


@dataclass
class PtychoDataLoader:
    """Scans to train on or reconstruct, in ptychopinn's :class:`ScanData`.

    ``data_dir`` is a training directory or file: ``train_data.npz`` (+ ``test_data.npz`` for
    validation), else its single ``*.npz`` (Ptychodus's "Export Training Data"), else its
    ``product.h5`` + ``diffraction.h5``. Training writes into ``output_dir/run_<time>``
    (``self.output_dir``).
    """

    data_dir: Any = None
    config_manager: ConfigManager | None = None
    data_format: Any = DataloaderFormats.LIGHTNING_ONLY_MODULE
    output_dir: Any = None
    scan: ScanData | None = field(default=None, repr=False)
    val_scan: ScanData | None = field(default=None, repr=False)
    object_shape: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.data_format, str):
            self.data_format = DataloaderFormats(self.data_format)
        if self.scan is None and self.data_dir is not None:
            self.scan, self.val_scan = self._read(Path(self.data_dir))
        if self.output_dir is not None:
            self.output_dir = _new_run_dir(Path(self.output_dir))
        if self.object_shape is None and self.scan is not None:
            shape = self.scan.metadata.get("ptychodus", {}).get("object_shape")
            if self.scan.object is not None:
                self.object_shape = tuple(self.scan.object.shape)  # type: ignore[assignment]
            elif shape:
                self.object_shape = (int(shape[0]), int(shape[1]))

    @staticmethod
    def _read(path: Path) -> tuple[ScanData, ScanData | None]:
        if not path.exists():
            raise DataError(f"{path}: training data not found")
        if path.is_file():
            return read_training_file(path), None
        train, test = path / "train_data.npz", path / "test_data.npz"
        if train.is_file():
            logger.info("training on %s", train)
            return read_training_file(train), read_training_file(test) if test.is_file() else None
        npz = sorted(path.glob("*.npz"))
        if len(npz) == 1:
            logger.info("training on %s", npz[0])
            return read_training_file(npz[0]), None
        if len(npz) > 1:
            raise DataError(
                f"{path}: holds several NPZ files ({', '.join(p.name for p in npz)}); keep one, or "
                "name them train_data.npz and test_data.npz"
            )
        if (path / "product.h5").is_file() and (path / "diffraction.h5").is_file():
            logger.info("training on %s/product.h5 + diffraction.h5", path)
            return read_training_file(path / "product.h5"), None
        raise DataError(
            f"{path}: no training data (expected an exported *.npz or product.h5 + diffraction.h5)"
        )

    @classmethod
    def from_np(
        cls,
        diff_patterns: Any,
        probe: Any,
        positions: Any,
        config_manager: ConfigManager | None = None,
        object_shape: tuple[int, int] | None = None,
    ) -> PtychoDataLoader:
        """Arrays as Ptychodus passes them.

        Parameters
        ----------
        diff_patterns : (M, H, H) counts, any real dtype
        probe : (P, H, H) or (H, H) complex mode stack
        positions : (M, 2) (y, x) object pixels, Ptychodus's convention (probe centre at its
            pixel (H - 1) / 2)
        object_shape : (Ho, Wo) of the object the positions refer to; by default the object is
            taken to be centred on the scan, as Ptychodus makes it
        """
        diff = _clip_counts(np.asarray(diff_patterns), "diff_patterns")
        pos = np.asarray(positions, dtype=np.float64)
        if diff.ndim != 3 or pos.shape != (diff.shape[0], 2):
            raise DataError(
                f"from_np: expected diff_patterns (M, H, W) and positions (M, 2), got "
                f"{diff.shape} and {pos.shape}"
            )
        scan = ScanData(
            diffraction=diff,
            units="counts",
            positions_px=pos + center_offset_px(int(diff.shape[-1])),
            probe=np.asarray(probe),
            source="ptychodus",
        )
        return cls(config_manager=config_manager, scan=scan, object_shape=object_shape)


# -- training ------------------------------------------------------------------------------


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


# -- inference -----------------------------------------------------------------------------


class InferenceEngine:
    """Reconstructs the scans of a :class:`PtychoDataLoader` with a loaded model."""

    def __init__(
        self, config_manager: ConfigManager | None = None, ptycho_model: PtychoModel | None = None
    ):
        if ptycho_model is None:
            raise BundleError("InferenceEngine: ptycho_model is required")
        self.ptycho_model = ptycho_model
        self.config_manager = config_manager or ConfigManager.from_loaded_model(ptycho_model)

    def _device(self) -> str:
        """A GPU when there is one (inference needs no multi-device set-up), else the CPU."""
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def reconstruct(self, data_loader: PtychoDataLoader) -> Any:
        """The :class:`ptychopinn.inference.Reconstruction` (canvas with its origin)."""
        from ptychopinn.inference import reconstruct

        if data_loader.scan is None:
            raise DataError("InferenceEngine: the data loader holds no scan")
        bundle = self.ptycho_model.require_module().to_bundle()
        inference = self.config_manager.inference_config
        return reconstruct(
            bundle,
            data_loader.scan,
            batch_size=int(inference.batch_size),
            device=self._device(),
            weights=inference.core_weights,  # type: ignore[arg-type]
        )

    def predict_and_stitch(self, data_loader: PtychoDataLoader) -> np.ndarray:
        """The complex object (Ho, Wo) on the pixel grid of the input object.

        Ptychodus does not pass the object's shape; unless the loader knows it, the object is
        taken to be centred on the scan (as Ptychodus builds it), which fixes
        ``Ho = y_min + y_max + 1`` in Ptychodus pixels (same for Wo).
        """
        rec = self.reconstruct(data_loader)
        shape = data_loader.object_shape or scan_centred_object_shape(
            data_loader.scan.positions_px,  # type: ignore[union-attr]
            data_loader.scan.N,  # type: ignore[union-attr]
        )
        return rec.on_object_grid(shape)


def scan_centred_object_shape(positions_px: np.ndarray, n: int) -> tuple[int, int]:
    """(Ho, Wo) of an object centred on the scan's bounding box.

    Ptychodus centres pixel (Ho - 1) / 2 on the scan: with positions y in its convention,
    ``(Ho - 1) / 2 = (y_min + y_max) / 2``.

    >>> scan_centred_object_shape(np.array([[10.5, 20.5], [30.5, 40.5]]), 32)
    (41, 61)
    """
    pos = np.asarray(positions_px, dtype=np.float64) - center_offset_px(n)
    size = np.rint(pos.min(axis=0) + pos.max(axis=0) + 1).astype(int)
    return int(max(size[0], 1)), int(max(size[1], 1))
