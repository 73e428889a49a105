"""Configuration: frozen dataclasses, strict ``from_dict``/``to_dict``.

Every shape in the package is derived from one :class:`Config`. The number of
channels ``C`` of the network, the data and the bundle is ``gridsize**2`` and is
never stored anywhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from ptychopinn.errors import ConfigError

Architecture = Literal["ptychopinn", "backprop_unet"]
AmpActivation = Literal["softplus", "sigmoid", "exp", "relu"]
Mode = Literal["unsupervised", "supervised"]
InputTransform = Literal["none", "sqrt", "log1p"]
NormLayer = Literal["group", "batch", "layer", "none"]
MergeWeights = Literal["support", "probe"]
LossName = Literal["poisson", "mae"]
Scheduler = Literal["constant", "plateau", "cosine"]

T = TypeVar("T")


def _check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network and the physics it is trained through.

    Attributes
    ----------
    N : int
        Diffraction pattern and object patch size in pixels (power of two, 32..256).
    gridsize : int
        Patches per group along one axis; a group holds ``C = gridsize**2`` patterns.
    group_stride : int
        Spacing of a group's members in scan steps: 1 = the nearest neighbours; 2 = every
        other position around the seed, so a group's overlap constraint reaches twice as
        far (the members must still overlap).
    n_filters_scale : float
        Multiplier on the base filter ladder (32, 64, 128, ... for N = 64).
    stem_stride : int
        Stride of the first convolution (2 = early downsampling, ~4x cheaper).
    amp_activation : str
        Positive activation of the amplitude head.
    probe_big : bool
        Learn the object outside the central N/2 support through a thin full-frame path.
    probe_mask : bool
        Multiply the probe by a centred disk of diameter N/2.
    object_support_fraction : float
        Side of the object support as a fraction of N (default 1/2).
    mode : str
        ``unsupervised`` (Poisson likelihood through the physics) or ``supervised``.
    input_transform : str
        Compression of the normalised amplitudes before the first convolution.
    norm_layer : str
        Normalisation after each convolution: ``group`` (GroupNorm), ``batch`` (BatchNorm),
        ``layer`` (LayerNorm over the channels of each pixel) or ``none``.
    architecture : str
        ``ptychopinn``: the encoder and two decoders of PtychoPINN. ``backprop_unet``: the
        measured amplitudes are propagated back to the sample with the probe's far-field
        phase, and a real-space U-Net maps that estimate to the object.
    per_pattern : bool
        At gridsize > 1, run the network on each pattern of a group separately (one set of
        weights, a single-pattern network) instead of on the group's patterns as channels.
        The group still shares one merged object in the loss (the overlap constraint), and
        each pattern's patch no longer depends on which group it is predicted in.
    merge_weights : str
        At gridsize > 1, how the patches of a group are weighted when they are merged into
        the shared object of the loss: ``probe`` (the support times the probe amplitude, as
        inference stitches them) or ``support`` (flat; the weighting before this option).
    """

    N: int = 64
    gridsize: int = 1
    group_stride: int = 1
    n_filters_scale: float = 2.0
    stem_stride: int = 1
    amp_activation: AmpActivation = "softplus"
    probe_big: bool = False
    probe_mask: bool = False
    object_support_fraction: float = 0.5
    mode: Mode = "unsupervised"
    input_transform: InputTransform = "sqrt"
    norm_layer: NormLayer = "batch"
    architecture: Architecture = "ptychopinn"
    per_pattern: bool = False
    merge_weights: MergeWeights = "probe"

    def __post_init__(self) -> None:
        if not isinstance(self.N, int) or self.N < 32 or self.N > 256 or self.N & (self.N - 1):
            raise ConfigError(f"N: expected a power of two from 32 to 256, got {self.N!r}")
        if not isinstance(self.gridsize, int) or not 1 <= self.gridsize <= 4:
            raise ConfigError(f"gridsize: expected an integer from 1 to 4, got {self.gridsize!r}")
        if not isinstance(self.group_stride, int) or not 1 <= self.group_stride <= 8:
            raise ConfigError(
                f"group_stride: expected an integer from 1 to 8, got {self.group_stride!r}"
            )
        if not self.n_filters_scale > 0:
            raise ConfigError(f"n_filters_scale: expected > 0, got {self.n_filters_scale!r}")
        _check_choice("stem_stride", self.stem_stride, (1, 2))
        _check_choice("amp_activation", self.amp_activation, ("softplus", "sigmoid", "exp", "relu"))
        _check_choice("mode", self.mode, ("unsupervised", "supervised"))
        _check_choice("input_transform", self.input_transform, ("none", "sqrt", "log1p"))
        _check_choice("norm_layer", self.norm_layer, ("group", "batch", "layer", "none"))
        _check_choice("architecture", self.architecture, ("ptychopinn", "backprop_unet"))
        _check_choice("merge_weights", self.merge_weights, ("support", "probe"))
        if not 0.0 < self.object_support_fraction <= 1.0:
            raise ConfigError(
                f"object_support_fraction: expected in (0, 1], got {self.object_support_fraction!r}"
            )

    @property
    def C(self) -> int:  # noqa: N802 - the physics name
        """Channels = patterns per group."""
        return self.gridsize * self.gridsize

    @property
    def n_blocks(self) -> int:
        """Encoder depth: 3 pooling blocks at N = 64, one more per doubling of N."""
        return int(math.log2(self.N)) - 3

    @property
    def filters(self) -> tuple[int, ...]:
        """Encoder filter ladder: (32, 64, 128) x n_filters_scale at N = 64."""
        return tuple(
            max(4, int(round(32 * 2**i * self.n_filters_scale))) for i in range(self.n_blocks)
        )

    @property
    def support_px(self) -> int:
        """Side of the object support in pixels."""
        return int(round(self.N * self.object_support_fraction))


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, data selection and hardware.

    The learning rate follows ``scheduler`` per optimiser step: ``constant``; ``cosine``,
    annealed to zero over the run; or ``plateau``, halved after 3 epochs without
    improvement. With ``warmup_fraction`` > 0 it first rises linearly from zero over that
    fraction of the steps (constant and cosine). Adam runs with ``betas = (0.9, adam_beta2)``.
    """

    max_epochs: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-3
    scheduler: Scheduler = "constant"
    warmup_fraction: float = 0.0
    adam_beta2: float = 0.999
    loss: LossName = "poisson"
    nphotons: float | None = None
    n_groups: int | None = None
    seed: int = 0
    val_fraction: float = 0.05
    early_stopping_patience: int | None = None
    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    deterministic: bool = False
    num_workers: int = 0
    logger: Literal["csv", "tensorboard", "mlflow", "none"] = "csv"
    mlflow_tracking_uri: str | None = None
    diffraction_units: Literal["auto", "amplitude", "counts"] = "auto"

    def __post_init__(self) -> None:
        for name in ("max_epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {value!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate: expected > 0, got {self.learning_rate!r}")
        _check_choice("scheduler", self.scheduler, ("constant", "plateau", "cosine"))
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError(f"warmup_fraction: expected in [0, 1), got {self.warmup_fraction!r}")
        if self.warmup_fraction > 0 and self.scheduler == "plateau":
            raise ConfigError(
                "warmup_fraction: a warmup needs scheduler 'constant' or 'cosine', got 'plateau'"
            )
        if not 0.0 < self.adam_beta2 < 1.0:
            raise ConfigError(f"adam_beta2: expected in (0, 1), got {self.adam_beta2!r}")
        _check_choice("loss", self.loss, ("poisson", "mae"))
        _check_choice("logger", self.logger, ("csv", "tensorboard", "mlflow", "none"))
        _check_choice("diffraction_units", self.diffraction_units, ("auto", "amplitude", "counts"))
        _check_choice("accelerator", self.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"))
        if self.nphotons is not None and not self.nphotons > 0:
            raise ConfigError(f"nphotons: expected > 0, got {self.nphotons!r}")
        if self.n_groups is not None and self.n_groups < 1:
            raise ConfigError(f"n_groups: expected a positive integer, got {self.n_groups!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: expected in [0, 1), got {self.val_fraction!r}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers: expected >= 0, got {self.num_workers!r}")


@dataclass(frozen=True)
class Config:
    """The whole configuration of a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from plain data, rejecting unknown sections and keys."""
        unknown = set(data) - {"model", "training"}
        if unknown:
            raise ConfigError(f"config: unknown sections {sorted(unknown)}")
        return cls(
            model=section_from_dict(ModelConfig, data.get("model", {})),
            training=section_from_dict(TrainingConfig, data.get("training", {})),
        )

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def section_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Instantiate a config dataclass from a dict; unknown keys are an error."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown keys {sorted(unknown)}; expected some of {sorted(names)}"
        )
    return cls(**data)
