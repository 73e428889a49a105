"""The five configuration objects Ptychodus 1.7.0 builds (``ptycho_torch.config_params``).

Ptychodus passes every keyword below (its ``PtychoPINNTorch*`` settings, see
``ptychodus/model/ptychopinn_torch/reconstructor.py``); the defaults are Ptychodus's own, so a
keyword left at its default says nothing. :meth:`ConfigManager.to_config
<ptycho_torch.api.base_api.ConfigManager.to_config>` maps the meaningful ones onto
:class:`ptychopinn.config.Config`; each class lists the keywords that ptychopinn accepts but
does not act on (``INERT``), and a warning names those set away from their default.

The classes are plain mutable dataclasses of scalars: Ptychodus pickles them into a spawned
process and sets ``training_config.n_devices`` after construction.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ptychopinn.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["DataConfig", "DatagenConfig", "InferenceConfig", "ModelConfig", "TrainingConfig"]


def _choice(cls_name: str, name: str, value: Any, choices: dict[str, str]) -> str:
    """Case-insensitive look-up of ``value`` in ``choices`` (spelling -> meaning)."""
    key = str(value).strip().casefold()
    if key not in choices:
        raise ConfigError(
            f"{cls_name}.{name}: expected one of {sorted(set(choices))}, got {value!r}"
        )
    return choices[key]


class _Facade:
    """Shared behaviour: report the accepted keywords that have no effect."""

    INERT: ClassVar[tuple[str, ...]] = ()

    def _report_inert(self) -> None:
        changed = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in self.INERT:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                continue
            value = getattr(self, f.name)
            if value != default:
                changed.append(f"{f.name}={value!r}")
        name = type(self).__name__
        if changed:
            logger.warning(
                "%s: accepted but without effect in ptychopinn: %s", name, ", ".join(changed)
            )
        logger.debug("%s: keywords without effect: %s", name, ", ".join(self.INERT))


_NORMALIZE = {"group": "group", "batch": "batch"}
_NEIGHBORS = {"nearest": "nearest", "min_dist": "min_dist", "4_quadrant": "4_quadrant"}
_SCALING = {"parseval": "parseval", "max": "max"}


@dataclass
class DataConfig(_Facade):
    """Data shape and grouping (Ptychodus group ``PtychoPINNTorchData``).

    Effective: ``N`` (checked against the patterns; the data decide), ``C`` and ``grid_size``
    (``C = gx * gy``, ``gx == gy`` = gridsize), ``data_scaling='Parseval'`` (ptychopinn's
    normalisation: mean sum X**2 = (N/2)**2). Neighbour groups are always the C nearest
    positions.
    """

    N: int = 128
    C: int = 4
    normalize: str = "Batch"
    neighbor_function: str = "Nearest"
    scan_pattern: str = "Isotropic"
    probe_normalize: bool = True
    x_bounds: tuple[float, float] = (0.1, 0.9)
    y_bounds: tuple[float, float] = (0.1, 0.9)
    min_neighbor_distance: float = 0.0
    max_neighbor_distance: float = 3.0
    K_quadrant: int = 30
    n_subsample: int = 7
    probe_scale: float = 4.0
    K: int = 6
    grid_size: tuple[int, int] = (2, 2)
    probe_ramp_removal: bool = False
    data_scaling: str = "Parseval"
    phase_subtraction: bool = True

    INERT: ClassVar[tuple[str, ...]] = (
        "normalize",
        "neighbor_function",
        "scan_pattern",
        "probe_normalize",
        "x_bounds",
        "y_bounds",
        "min_neighbor_distance",
        "max_neighbor_distance",
        "K_quadrant",
        "n_subsample",
        "probe_scale",
        "K",
        "probe_ramp_removal",
        "data_scaling",
        "phase_subtraction",
    )

    def __post_init__(self) -> None:
        self.grid_size = tuple(int(v) for v in self.grid_size)  # type: ignore[assignment]
        self.x_bounds = tuple(float(v) for v in self.x_bounds)  # type: ignore[assignment]
        self.y_bounds = tuple(float(v) for v in self.y_bounds)  # type: ignore[assignment]
        _choice("DataConfig", "normalize", self.normalize, _NORMALIZE)
        _choice("DataConfig", "neighbor_function", self.neighbor_function, _NEIGHBORS)
        _choice("DataConfig", "data_scaling", self.data_scaling, _SCALING)
        self.gridsize  # noqa: B018 - validates C and grid_size
        self._report_inert()

    @property
    def gridsize(self) -> int:
        gy, gx = self.grid_size
        if gy != gx or gy < 1:
            raise ConfigError(
                f"DataConfig.grid_size: expected a square grid (g, g), got {self.grid_size}"
            )
        if self.C != gy * gx:
            raise ConfigError(
                f"DataConfig: C = {self.C} must equal grid_size[0] * grid_size[1] = {gy * gx}"
            )
        return gy


_MODES = {"unsupervised": "unsupervised", "supervised": "supervised", "pinn": "unsupervised"}
_LOSSES = {"poisson": "poisson", "mae": "mae"}
#: Ptychodus's amplitude activations and ptychopinn's own; SiLU is not positive, so it maps
#: to its positive smooth relative, softplus.
_ACTIVATIONS = {
    "silu": "softplus",
    "swish": "softplus",
    "softplus": "softplus",
    "sigmoid": "sigmoid",
    "exp": "exp",
    "relu": "relu",
}


@dataclass
class ModelConfig(_Facade):
    """The network (Ptychodus group ``PtychoPINNTorchModel``).

    Effective: ``mode`` (``'Unsupervised'`` / ``'Supervised'``), ``loss_function``
    (``'Poisson'`` / ``'MAE'``), ``amp_activation`` (``'silu'`` -> softplus, ``'sigmoid'``),
    ``n_filters_scale`` (relative to upstream's standard 2, which is ptychopinn's standard
    network), ``probe_mask`` (None/False = no mask, anything else = ptychopinn's centred disk).
    ``C_model``, ``C_forward`` and ``decoder_last_amp_channels`` must equal ``DataConfig.C``;
    ``object_big`` is what ptychopinn's overlap groups do. ``probe_big`` has no effect:
    ptychopinn predicts each pattern's central object support, which the overlaps stitch
    into the whole scan. ``batch_norm`` has no effect: the default recipe's LayerNorm is used.
    """

    mode: str = "Unsupervised"
    object_big: bool = True
    probe_big: bool = True
    loss_function: str = "Poisson"
    amp_activation: str = "silu"
    cbam_encoder: bool = True
    decoder_last_amp_channels: int | None = None
    use_shared_decoder: bool = False
    intensity_scale_trainable: bool = False
    intensity_scale: float = 10000.0
    max_position_jitter: int = 10
    num_datasets: int = 1
    C_model: int | None = None
    C_forward: int | None = None
    amp_loss: str | None = None
    phase_loss: str | None = None
    amp_loss_coeff: float = 1.0
    phase_loss_coeff: float = 1.0
    n_filters_scale: float = 2
    probe_mask: Any = None
    eca_decoder: bool = False
    batch_norm: bool = False
    edge_pad: int = 10
    decoder_last_c_outer_fraction: float = 0.125
    cbam_bottleneck: bool = False
    cbam_decoder: bool = False
    spatial_decoder: bool = False
    decoder_spatial_kernel: int = 7
    eca_encoder: bool = False
    offset: int = 6
    probe_reference_coeff: float = 0.0
    amplitude_variance_loss: bool = False
    amplitude_variance_coeff: float = 0.01

    INERT: ClassVar[tuple[str, ...]] = (
        "object_big",
        "probe_big",
        "batch_norm",
        "cbam_encoder",
        "use_shared_decoder",
        "intensity_scale_trainable",
        "intensity_scale",
        "max_position_jitter",
        "num_datasets",
        "amp_loss",
        "phase_loss",
        "amp_loss_coeff",
        "phase_loss_coeff",
        "eca_decoder",
        "edge_pad",
        "decoder_last_c_outer_fraction",
        "cbam_bottleneck",
        "cbam_decoder",
        "spatial_decoder",
        "decoder_spatial_kernel",
        "eca_encoder",
        "offset",
        "probe_reference_coeff",
        "amplitude_variance_loss",
        "amplitude_variance_coeff",
    )

    def __post_init__(self) -> None:
        _choice("ModelConfig", "mode", self.mode, _MODES)
        _choice("ModelConfig", "loss_function", self.loss_function, _LOSSES)
        _choice("ModelConfig", "amp_activation", self.amp_activation, _ACTIVATIONS)
        if not float(self.n_filters_scale) > 0:
            raise ConfigError(
                f"ModelConfig.n_filters_scale: expected > 0, got {self.n_filters_scale!r}"
            )
        self._report_inert()

    @property
    def core_mode(self) -> str:
        return _MODES[str(self.mode).strip().casefold()]

    @property
    def core_loss(self) -> str:
        return _LOSSES[str(self.loss_function).strip().casefold()]

    @property
    def core_amp_activation(self) -> str:
        return _ACTIVATIONS[str(self.amp_activation).strip().casefold()]

    @property
    def core_probe_mask(self) -> bool:
        mask = self.probe_mask
        if mask is None or mask is False:
            return False
        if mask is not True:
            logger.info("ModelConfig.probe_mask: a mask array is replaced by the centred disk")
        return True


_DEVICES = {"cuda": "cuda", "gpu": "gpu", "cpu": "cpu", "mps": "mps", "auto": "auto"}
_SCHEDULERS = {
    "default": "cosine",  # Ptychodus's default: the default recipe's schedule
    "constant": "constant",
    "cosine": "cosine",
    "plateau": "plateau",
    "exponential": "constant",
}
_STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "deepspeed", "fsdp")


@dataclass
class TrainingConfig(_Facade):
    """Optimisation and hardware (Ptychodus group ``PtychoPINNTorchTraining``).

    Effective: ``epochs``, ``batch_size``, ``learning_rate``, ``n_devices``, ``num_workers``,
    ``device`` (``'cuda'`` without a GPU falls back to the CPU with a warning), ``strategy``
    (``'ddp_spawn'``/``'ddp'`` on one device run in-process), ``scheduler`` (``'Default'`` =
    the default recipe's cosine, ``'Cosine'``; ``'Exponential'`` has no ptychopinn
    counterpart: constant), ``warmup_epochs`` (a linear rise of the learning rate over that
    many of the ``epochs``; 0, Ptychodus's default, keeps the default recipe's warmup),
    ``nll`` (False selects the amplitude MAE loss). ``framework``, ``orchestrator``, ``notes`` and
    ``model_name`` are labels.
    """

    epochs: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-3
    n_devices: int = 1
    num_workers: int = 4
    accum_steps: int = 1
    epochs_fine_tune: int = 0
    fine_tune_gamma: float = 0.1
    gradient_clip_val: float | None = None
    nll: bool = True
    device: str = "cuda"
    strategy: str = "ddp_spawn"
    framework: str = "Lightning"
    orchestrator: str = "Lightning"
    scheduler: str = "Default"
    warmup_epochs: int = 0
    min_lr_ratio: float = 0.1
    notes: str = ""
    model_name: str = "PtychoPINNv2"
    enable_staged_finetuning: bool = False
    finetune_stage1_epochs: int = 7
    finetune_stage2_epochs: int = 7
    finetune_stage3_epochs: int = 5
    finetune_stage1_lr_decoder: float = 0.1
    finetune_stage2_lr_encoder_top: float = 0.01
    finetune_stage2_lr_decoder: float = 0.05
    finetune_stage2_lr_phase_head: float = 0.1
    finetune_stage3_lr_encoder_bottom: float = 0.005
    finetune_stage3_lr_encoder_top: float = 0.01
    finetune_stage3_lr_decoder: float = 0.02
    finetune_stage3_lr_phase_head: float = 0.05
    finetune_skip_stage3: bool = True
    finetune_early_stop_patience: int = 3
    finetune_val_split: float = 0.05
    seed: int = 0

    INERT: ClassVar[tuple[str, ...]] = (
        "accum_steps",
        "epochs_fine_tune",
        "fine_tune_gamma",
        "gradient_clip_val",
        "min_lr_ratio",
        "enable_staged_finetuning",
        "finetune_stage1_epochs",
        "finetune_stage2_epochs",
        "finetune_stage3_epochs",
        "finetune_stage1_lr_decoder",
        "finetune_stage2_lr_encoder_top",
        "finetune_stage2_lr_decoder",
        "finetune_stage2_lr_phase_head",
        "finetune_stage3_lr_encoder_bottom",
        "finetune_stage3_lr_encoder_top",
        "finetune_stage3_lr_decoder",
        "finetune_stage3_lr_phase_head",
        "finetune_skip_stage3",
        "finetune_early_stop_patience",
        "finetune_val_split",
    )

    def __post_init__(self) -> None:
        _choice("TrainingConfig", "device", self.device, _DEVICES)
        _choice("TrainingConfig", "scheduler", self.scheduler, _SCHEDULERS)
        if str(self.strategy) not in _STRATEGIES:
            raise ConfigError(
                f"TrainingConfig.strategy: expected one of {list(_STRATEGIES)}, got {self.strategy!r}"
            )
        if str(self.scheduler).casefold() == "exponential":
            logger.warning(
                "TrainingConfig.scheduler='Exponential' has no ptychopinn counterpart: constant"
            )
        self._report_inert()

    @property
    def core_warmup_fraction(self) -> float:
        """``warmup_epochs`` as the fraction of the run that ptychopinn's config counts."""
        epochs, warmup = int(self.epochs), int(self.warmup_epochs)
        if not 0 <= warmup < max(epochs, 1):
            raise ConfigError(
                f"TrainingConfig.warmup_epochs: expected from 0 to below epochs = {epochs}, "
                f"got {warmup}"
            )
        return warmup / epochs if warmup else 0.0

    @property
    def core_scheduler(self) -> str:
        return _SCHEDULERS[str(self.scheduler).strip().casefold()]

    @property
    def core_device(self) -> str:
        return _DEVICES[str(self.device).strip().casefold()]


_WEIGHTS = {
    "probe": "probe",
    "intensity": "intensity",
    "uniform": "support",
    "support": "support",
}


@dataclass
class InferenceConfig(_Facade):
    """Inference (Ptychodus group ``PtychoPINNTorchInference``).

    Effective: ``batch_size`` (groups per forward pass), ``patch_weighting`` (``'probe'`` =
    stitching weighted by the probe amplitude, ``'intensity'`` = by the probe intensity,
    ``'uniform'`` = the flat object support). The object support
    (central N/2) plays the part of ``middle_trim``.
    """

    batch_size: int = 1000
    middle_trim: int = 32
    experiment_number: int = 0
    patch_weighting: str = "probe"
    pad_eval: bool = True
    window: int = 20

    INERT: ClassVar[tuple[str, ...]] = ("middle_trim", "experiment_number", "pad_eval", "window")

    def __post_init__(self) -> None:
        _choice("InferenceConfig", "patch_weighting", self.patch_weighting, _WEIGHTS)
        if int(self.batch_size) < 1:
            raise ConfigError(f"InferenceConfig.batch_size: expected >= 1, got {self.batch_size!r}")
        self._report_inert()

    @property
    def core_weights(self) -> str:
        return _WEIGHTS[str(self.patch_weighting).strip().casefold()]


@dataclass
class DatagenConfig(_Facade):
    """Simulation settings; Ptychodus passes none. Simulate with ``ptychopinn simulate``."""

    extra: dict[str, Any] = field(default_factory=dict)

    INERT: ClassVar[tuple[str, ...]] = ("extra",)

    def __post_init__(self) -> None:
        self._report_inert()
