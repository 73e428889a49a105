"""Configuration: frozen dataclasses whose fields are the options of every interface.

Every shape in the package is derived from one :class:`Config`. The number of
channels ``C`` of the network, the data and the bundle is ``gridsize**2`` and is
never stored anywhere else.

Each field carries its help text, unit, bounds and alternative spellings in its metadata
(:func:`option`); the choices of a field come from its ``Literal`` type. The command line
(:mod:`ptychopinn.options`), the JSON config and the benchmarks are generated from these
fields, and :func:`check_fields` validates every field from the same metadata, so a choice or
a range is written once. The defaults are the recipe that ``ptychopinn train`` runs without
recipe flags (:mod:`ptychopinn.presets` names the others).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar

from ptychopinn.errors import ConfigError

logger = logging.getLogger(__name__)

Architecture = Literal["backprop_unet", "ptychopinn"]
AmpActivation = Literal["softplus", "sigmoid", "exp", "relu"]
Mode = Literal["unsupervised", "supervised"]
InputTransform = Literal["none", "sqrt", "log1p"]
NormLayer = Literal["layer", "batch", "group", "none"]
MergeWeights = Literal["probe", "support"]
LossName = Literal["poisson", "mae"]
Scheduler = Literal["cosine", "constant", "plateau"]
Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Logger = Literal["csv", "tensorboard", "mlflow", "none"]

T = TypeVar("T")


def option(
    default: Any,
    help: str,
    *,
    unit: str | None = None,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    aliases: tuple[str, ...] = (),
    flag: bool = True,
) -> Any:
    """A config field with its documentation and bounds.

    Parameters
    ----------
    default : the value of the default recipe
    help : one sentence for ``--help`` and the docs
    unit : the unit of a number (px, s, photons, ...)
    low, high : inclusive bounds of a number (``low_open``: ``low`` itself is excluded)
    aliases : other spellings of the command-line flag (``--nepochs`` for ``max_epochs``)
    flag : whether ``ptychopinn train`` has a flag for it (``N`` comes from the data)
    """
    metadata = {
        "help": help,
        "unit": unit,
        "low": low,
        "high": high,
        "low_open": low_open,
        "aliases": aliases,
        "flag": flag,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ModelConfig:
    """The network and the physics it is trained through.

    Overlap-constrained training: the ``overlap_grid**2`` network inputs of an overlap group lie
    on a lattice ``overlap_stride`` scan steps apart; their predicted patches are merged into
    one object (weighted by ``merge_weights``) before the likelihood of every pattern, so each
    prediction must agree with its neighbours'. A network input is ``gridsize**2``
    neighbouring patterns as channels (upstream PtychoPINN's gridsize).
    """

    N: int = option(
        64,
        "diffraction pattern and object patch size, a power of two from 32 to 256 (taken from "
        "the data)",
        unit="px",
        flag=False,
    )
    gridsize: int = option(
        1,
        "neighbouring patterns the network sees as channels, along one axis (C = gridsize**2)",
        low=1,
        high=4,
    )
    overlap_grid: int = option(
        3,
        "network inputs per overlap group, along one axis: their patches are merged into one "
        "object before the likelihood (1: no overlap constraint beyond the channels)",
        low=1,
        high=4,
    )
    overlap_stride: int = option(
        2,
        "spacing of an overlap group's inputs in scan steps (1: nearest neighbours)",
        low=1,
        high=8,
        aliases=("group_stride",),
    )
    architecture: Architecture = option(
        "backprop_unet",
        "backprop_unet: each pattern propagated back to the sample through the probe, then a "
        "real-space U-Net; ptychopinn: upstream's encoder and two decoders",
    )
    n_filters_scale: float = option(
        1.0, "multiplier on the network's filter ladder", low=0.0, low_open=True, high=16.0
    )
    stem_stride: Literal[1, 2] = option(
        2, "stride of the first convolution (2: the network runs at half resolution)"
    )
    norm_layer: NormLayer = option(
        "layer",
        "normalisation after each convolution: layer (over the channels of each pixel), "
        "batch, group or none",
    )
    merge_weights: MergeWeights = option(
        "probe",
        "weight of a patch's pixels when an overlap group is merged: the probe amplitude on "
        "the support, or flat",
    )
    amp_activation: AmpActivation = option("softplus", "positive activation of the amplitude")
    probe_big: bool = option(
        False, "predict the whole N x N frame, not only the central object support"
    )
    probe_mask: bool = option(False, "multiply the probe by a centred disk of diameter N/2")
    object_support_fraction: float = option(
        0.5,
        "side of the object support as a fraction of N",
        low=0.0,
        low_open=True,
        high=1.0,
        flag=False,
    )
    mode: Mode = option(
        "unsupervised",
        "unsupervised: Poisson likelihood of the measured patterns through the probe; "
        "supervised: distance to ground-truth patches",
    )
    input_transform: InputTransform = option(
        "sqrt", "compression of the amplitudes before the first convolution (ptychopinn)"
    )
    unet_input: Literal["window", "frame"] = option(
        "window",
        "what the backprop_unet sees: the window of the region it predicts, or the whole "
        "frame (models saved before the window)",
        flag=False,
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.N & (self.N - 1) or not 32 <= self.N <= 256:
            raise ConfigError(f"N: expected a power of two from 32 to 256, got {self.N!r}")

    @property
    def C(self) -> int:  # noqa: N802 - the physics name
        """Channels = patterns per network input."""
        return self.gridsize * self.gridsize

    @property
    def K(self) -> int:  # noqa: N802 - patterns of a group, as C
        """Network inputs per overlap group."""
        return self.overlap_grid * self.overlap_grid

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

    @property
    def predicted_px(self) -> int:
        """Side of the central region the network predicts (the whole frame with probe_big)."""
        return self.N if self.probe_big else self.support_px


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation, data selection and hardware.

    The learning rate follows ``scheduler`` per optimiser step: ``cosine``, annealed to zero
    at the end of the run (the last epoch or ``max_time``, whichever comes first);
    ``constant``; or ``plateau``, halved after 3 epochs without improvement. With
    ``warmup_fraction`` > 0 it first rises linearly from zero over that fraction of the run
    (with every schedule).
    Adam runs with ``betas = (0.9, adam_beta2)``.
    """

    max_epochs: int = option(
        20,
        "training epochs; an epoch seeds one overlap group at every pattern (see groups_per_epoch)",
        low=1,
        aliases=("nepochs", "epochs"),
    )
    max_time: float | None = option(
        None,
        "stop training after this wall time (seconds, or [DD:]HH:MM:SS); the learning-rate "
        "schedule follows whichever of time and epochs runs out first",
        unit="s",
        low=0.0,
        low_open=True,
    )
    batch_size: int = option(
        16,
        "network inputs per optimiser step (patterns at gridsize 1), in whole overlap groups: "
        "16 = 2 groups of 9",
        low=1,
    )
    groups_per_epoch: int | None = option(
        None,
        "overlap groups per epoch (default: one per pattern, at least 512 and at most 4096, "
        "drawn anew each epoch)",
        low=1,
    )
    learning_rate: float = option(
        1e-3, "Adam's learning rate", low=0.0, low_open=True, aliases=("lr",)
    )
    scheduler: Scheduler = option("cosine", "learning-rate schedule, per optimiser step")
    probe_trainable: bool = option(
        False,
        "learn the probe with the network through the likelihood (unsupervised); the learned "
        "probe goes into the bundle",
    )
    probe_learning_rate: float = option(
        0.01,
        "Adam's learning rate for a trainable probe (same schedule as the network's)",
        low=0.0,
        low_open=True,
    )
    warmup_fraction: float = option(
        0.06,
        "fraction of the run over which the learning rate first rises linearly from zero",
        low=0.0,
        high=0.99,
    )
    adam_beta2: float = option(
        0.99, "Adam's second-moment decay", low=0.0, low_open=True, high=0.999999
    )
    loss: LossName = option("poisson", "unsupervised loss: Poisson likelihood or amplitude MAE")
    nphotons: float | None = option(
        None,
        "photons per pattern for the Poisson scale (default: measured from the data)",
        unit="photons",
        low=0.0,
        low_open=True,
    )
    n_groups: int | None = option(
        None,
        "number of groups (patterns seeding one; all when omitted or larger than the scan)",
        low=1,
        aliases=("n_images",),
    )
    synthetic_objects: int = option(
        0,
        "train on the scan plus this many scans simulated with its probe, positions and dose "
        "over random objects of diverse kinds (shapes, textures, lines, fields; phase-only to "
        "strongly absorbing), so the model transfers to new samples",
        low=0,
        high=10_000,
    )
    seed: int = option(0, "random seed", low=0, high=2**32 - 1)
    val_fraction: float = option(
        0.05, "share of the groups held out for validation without --val_data", low=0, high=0.5
    )
    early_stopping_patience: int | None = option(
        None, "stop after this many epochs without improvement", low=1
    )
    accelerator: Accelerator = option(
        "auto", "compute device: auto picks a GPU when one is present"
    )
    devices: int | str = option(1, "devices per node: a number or 'auto'", low=1, high=4096)
    num_nodes: int = option(1, "nodes of a distributed run", low=1, high=4096)
    strategy: str = option("auto", "Lightning strategy: auto, ddp, ddp_spawn, ...")
    precision: str = option(
        "auto",
        "auto (bf16-mixed where the device computes in bfloat16 natively, else 32-true) or a "
        "Lightning precision: 32-true, bf16-mixed, 16-mixed, ...",
    )
    deterministic: bool = option(False, "deterministic algorithms")
    num_workers: int = option(
        0, "data-loader worker processes", low=0, high=256, aliases=("num-workers",)
    )
    logger: Logger = option("csv", "metrics logger (mlflow and tensorboard need their packages)")
    mlflow_tracking_uri: str | None = option(
        None, "MLflow tracking URI (default: a SQLite store under the run directory)"
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ConfigError(
                f"devices: expected a positive integer or 'auto', got {self.devices!r}"
            )
        if isinstance(self.devices, int) and self.devices < 1:
            raise ConfigError(
                f"devices: expected a positive integer or 'auto', got {self.devices!r}"
            )


@dataclass(frozen=True)
class Config:
    """The whole configuration of a training run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Reject combinations of fields that cannot work together (before any work starts)."""
        m, t = self.model, self.training
        if m.mode == "supervised" and t.loss == "mae":
            raise ConfigError(
                "loss 'mae' compares predicted and measured diffraction (unsupervised); "
                "mode 'supervised' compares patches with the ground truth"
            )
        if t.mlflow_tracking_uri is not None and t.logger != "mlflow":
            raise ConfigError(
                f"mlflow_tracking_uri is set but the logger is {t.logger!r}: use logger 'mlflow'"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from plain data, rejecting unknown sections and keys.

        Model sections written by earlier versions (``per_pattern``, ``group_stride``) are
        translated to the current fields; whole saved configs: :func:`migrate_saved_config`.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"model", "training"}
        if unknown:
            raise ConfigError(f"config: unknown sections {sorted(unknown)}")
        model = dict(data.get("model", {}))
        training = dict(data.get("training", {}))
        return cls(
            model=section_from_dict(ModelConfig, migrate_model_section(model)),
            training=section_from_dict(TrainingConfig, training),
        )

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)


def migrate_saved_config(data: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version (bundle, checkpoint), in today's fields.

    Saved configs hold every field; one without ``overlap_grid`` predates the overlap
    group's own fields (:func:`migrate_model_section`) and the U-Net's window: its U-Net saw
    the whole frame.
    """
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        return data
    model = data["model"]
    if "overlap_grid" in model:
        return data
    model = migrate_model_section({"overlap_grid": 1, "overlap_stride": 1, **model})
    model.setdefault("unet_input", "frame")
    training = data.get("training")
    if isinstance(training, dict):
        training = migrate_training_section(training)
    return {**data, "model": model, "training": training or {}}


def migrate_model_section(model: dict[str, Any]) -> dict[str, Any]:
    """Translate a model section written before the overlap group had its own fields.

    Then ``gridsize`` was the group of the loss, ``per_pattern`` ran a single-pattern network
    on each member, and ``group_stride`` spaced the members. A per-pattern model is a
    gridsize-1 network trained in overlap groups; a channel model's group was its channels.
    """
    if "per_pattern" not in model and "group_stride" not in model:
        return model
    model = dict(model)
    per_pattern = bool(model.pop("per_pattern", False))
    stride = int(model.pop("group_stride", 1))
    gridsize = int(model.get("gridsize", 1))
    if per_pattern and gridsize > 1:
        model.update(gridsize=1, overlap_grid=gridsize, overlap_stride=stride)
    else:
        model.update(overlap_grid=1, overlap_stride=1)
        if stride > 1 and gridsize > 1:
            logger.warning(
                "this config's channel groups were spaced %d scan steps apart; they are the "
                "nearest neighbours now",
                stride,
            )
    return model


def migrate_training_section(training: dict[str, Any]) -> dict[str, Any]:
    """Drop keys of earlier versions that no longer configure training."""
    training = dict(training)
    training.pop("diffraction_units", None)  # a reading option (read_scan), never used here
    return training


def section_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Instantiate a config dataclass from a dict; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown keys {sorted(unknown)}; expected some of {sorted(names)}"
        )
    return cls(**data)


# -- field validation from the metadata ----------------------------------------------------
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of each field of a config dataclass."""
    return typing.get_type_hints(cls)


def field_choices(annotation: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal`` annotation (possibly ``Optional``) allows, else None."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return None


def base_types(annotation: Any) -> tuple[tuple[type, ...], bool]:
    """(accepted Python types, whether None is allowed) of an annotation."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is not Literal else ()
    optional = type(None) in args
    kinds = [a for a in args if a is not type(None)] if args else [annotation]
    types: list[type] = []
    for kind in kinds:
        if typing.get_origin(kind) is Literal:
            types.extend({type(v) for v in typing.get_args(kind)})
        elif isinstance(kind, type):
            types.append(kind)
    return tuple(types), optional


def check_value(name: str, annotation: Any, meta: Any, value: Any) -> None:
    """Raise :class:`ConfigError` when ``value`` does not fit the field."""
    types, optional = base_types(annotation)
    if value is None:
        if optional:
            return
        raise ConfigError(f"{name}: a value is required, got None")
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if float in types and not ok and isinstance(value, int) and not isinstance(value, bool):
        ok = True  # an int where a float is expected
    if not ok:
        expected = " or ".join(t.__name__ for t in types)
        raise ConfigError(f"{name}: expected {expected}, got {value!r}")
    choices = field_choices(annotation)
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}: expected one of {list(choices)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta.get("low"), meta.get("high")
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {value!r}")
        too_low = low is not None and (value <= low if meta.get("low_open") else value < low)
        if too_low or (high is not None and value > high):
            raise ConfigError(f"{name}: expected {describe_range(meta)}, got {value!r}")


def describe_range(meta: Any) -> str:
    """``a number > 0``, ``from 1 to 8``, ... for the bounds of a field."""
    low, high, open_ = meta.get("low"), meta.get("high"), meta.get("low_open")
    if low is not None and high is not None:
        return f"a value in ({low:g}, {high:g}]" if open_ else f"a value from {low:g} to {high:g}"
    if low is not None:
        return f"a value > {low:g}" if open_ else f"a value >= {low:g}"
    if high is not None:
        return f"a value <= {high:g}"
    return "a value"


def check_fields(instance: Any) -> None:
    """Validate every field of a config dataclass against its type, choices and bounds."""
    hints = field_types(type(instance))
    for f in fields(instance):
        check_value(f.name, hints[f.name], f.metadata, getattr(instance, f.name))
