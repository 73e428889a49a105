"""Named training recipes: each is a set of config values applied over the defaults.

The defaults of :class:`~ptychopinn.config.ModelConfig` and
:class:`~ptychopinn.config.TrainingConfig` are the ``overlap`` recipe, the best one measured;
the others exist to depart from it on purpose. Values given by ``--config`` and by flags
override a recipe's (see :func:`resolve`).
"""

from __future__ import annotations

from typing import Any

from ptychopinn.errors import ConfigError

#: Recipe name -> {"model": {...}, "training": {...}} over the defaults.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # Overlap-constrained training: the physics-informed U-Net predicts each pattern on its own,
    # and the nine patches of a 3 x 3 group two scan steps apart are merged into one object
    # (weighted by the probe amplitude) before the Poisson likelihood; LayerNorm, warmup then
    # cosine from 1e-3, Adam beta2 0.99. The defaults.
    "overlap": {"model": {}, "training": {}},
    # One pattern at a time, no overlap group: about 9x cheaper per epoch and a worse network
    # alone (its patches' constant phases are left to stitching); for tests and quick looks.
    "fast": {
        "model": {"overlap_grid": 1, "overlap_stride": 1, "norm_layer": "batch"},
        "training": {
            "max_epochs": 10,
            "learning_rate": 2e-3,
            "warmup_fraction": 0.0,
            "adam_beta2": 0.999,
        },
    },
    # Upstream PtychoPINN: its encoder and two decoders at full size, BatchNorm, a constant
    # learning rate; at gridsize > 1 the channels' patches share one object (its object_big).
    "upstream": {
        "model": {
            "architecture": "ptychopinn",
            "n_filters_scale": 2.0,
            "stem_stride": 1,
            "norm_layer": "batch",
            "overlap_grid": 1,
            "overlap_stride": 1,
        },
        "training": {
            "max_epochs": 50,
            "scheduler": "constant",
            "warmup_fraction": 0.0,
            "adam_beta2": 0.999,
        },
    },
}

DEFAULT_RECIPE = "overlap"


def recipe_values(name: str) -> dict[str, dict[str, Any]]:
    """The config values of recipe ``name`` (a copy)."""
    if name not in RECIPES:
        raise ConfigError(f"preset: expected one of {sorted(RECIPES)}, got {name!r}")
    return {section: dict(values) for section, values in RECIPES[name].items()}


def resolve(
    name: str | None,
    config_file: dict[str, Any] | None = None,
    flags: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Merge a recipe, a JSON config and flags: recipe < config file < flags.

    Returns the merged sections and, for each value that is not the default recipe's, where
    it came from (``"preset fast"``, ``"--config"``, ``"flag"``), keyed ``section.name``.
    """
    recipe = name or DEFAULT_RECIPE
    merged = recipe_values(recipe)
    sources: dict[str, str] = {}
    for section, values in merged.items():
        for key in values:
            sources[f"{section}.{key}"] = f"preset {recipe}"
    for origin, layer in (("--config", config_file or {}), ("flag", flags or {})):
        for section, values in layer.items():
            if section not in ("model", "training"):
                raise ConfigError(f"config: unknown section {section!r}")
            if not isinstance(values, dict):
                raise ConfigError(f"config: section {section!r} must be a JSON object")
            merged.setdefault(section, {}).update(values)
            for key in values:
                sources[f"{section}.{key}"] = origin
    return merged, sources


#: Training fields that say where and how a run computes, or which data it uses, not how it
#: learns: departures in them do not change the recipe's name.
_NOT_RECIPE = frozenset(
    {
        "n_groups",
        "synthetic_objects",
        "val_fraction",
        "accelerator",
        "devices",
        "num_nodes",
        "strategy",
        "precision",
        "deterministic",
        "num_workers",
        "logger",
        "mlflow_tracking_uri",
        "seed",
    }
)


def describe(config: Any) -> str:
    """The recipe a config is: ``overlap``, or the nearest one and what departs from it.

    >>> from ptychopinn.config import Config
    >>> describe(Config())
    'overlap'
    """
    from ptychopinn.config import Config

    best: tuple[int, str, list[str]] | None = None
    for name in RECIPES:
        values = recipe_values(name)
        reference = Config.from_dict(
            {"model": {**values["model"], "N": config.model.N}, "training": values["training"]}
        )
        changed = [
            f"{key}={getattr(getattr(config, section), key)!r}"
            for section in ("model", "training")
            for key in getattr(reference, section).__dataclass_fields__
            if key not in _NOT_RECIPE
            and getattr(getattr(config, section), key) != getattr(getattr(reference, section), key)
        ]
        if best is None or len(changed) < best[0]:
            best = (len(changed), name, changed)
    assert best is not None
    _, name, changed = best
    return f"{name} with {', '.join(changed)}" if changed else name
