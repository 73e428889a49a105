"""The import path Ptychodus 1.7.0 uses (``ptycho_torch.api.base_api``); adapters over ptychopinn.

Ptychodus imports every name below from this module, so it stays; the code lives by concept in
the other modules of :mod:`ptycho_torch.api`, and this module only re-exports it:

- :mod:`.configs`: :class:`ConfigManager`, :func:`resolve_hardware`, :func:`facade_configs`
- :mod:`.models`: :class:`PtychoModel`
- :mod:`.data`: :class:`DataloaderFormats`, :class:`PtychoDataLoader`,
  :func:`read_training_file`, :func:`_clip_counts`
- :mod:`.training`: :class:`Trainer`, :class:`_LightningSettings`, :func:`_picklable`,
  :func:`worker_count_for`
- :mod:`.inference`: :class:`InferenceEngine`, :func:`scan_centred_object_shape`

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

from ptycho_torch.api.configs import ConfigManager, facade_configs, resolve_hardware
from ptycho_torch.api.data import (
    DataloaderFormats,
    PtychoDataLoader,
    _clip_counts,
    read_training_file,
)
from ptycho_torch.api.inference import InferenceEngine, scan_centred_object_shape
from ptycho_torch.api.models import PtychoModel
from ptycho_torch.api.training import Trainer, _LightningSettings, _picklable, worker_count_for

__all__ = [
    "ConfigManager",
    "DataloaderFormats",
    "InferenceEngine",
    "PtychoDataLoader",
    "PtychoModel",
    "Trainer",
    "_LightningSettings",
    "_clip_counts",
    "_picklable",
    "facade_configs",
    "read_training_file",
    "resolve_hardware",
    "scan_centred_object_shape",
    "worker_count_for",
]
