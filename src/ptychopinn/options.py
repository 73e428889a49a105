"""Command-line options generated from the config fields (one source of truth).

:func:`add_config_arguments` turns every field of :class:`~ptychopinn.config.ModelConfig` and
:class:`~ptychopinn.config.TrainingConfig` into a flag: its help, unit and default from the
field's metadata, its choices from the ``Literal`` type, its value checked at parse time by
the same :func:`~ptychopinn.config.check_value` that validates a config.
:func:`config_overrides` collects the flags that were given; :func:`resolve_config` merges a
recipe, a JSON config and those flags (recipe < ``--config`` < flags).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

from ptychopinn.config import (
    Config,
    ModelConfig,
    TrainingConfig,
    base_types,
    check_value,
    field_choices,
    field_types,
    section_from_dict,
)
from ptychopinn.errors import ConfigError
from ptychopinn.presets import DEFAULT_RECIPE, RECIPES, resolve

SECTIONS: dict[str, type] = {"model": ModelConfig, "training": TrainingConfig}


def spellings(name: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """``--name`` with its dash twin, then each alias with its twin."""
    out: list[str] = []
    for base in (name, *aliases):
        for variant in (base, base.replace("_", "-"), base.replace("-", "_")):
            flag = "--" + variant
            if flag not in out:
                out.append(flag)
    return out


def parse_duration_s(text: str) -> float:
    """Seconds from ``"90"``, ``"1.5"``, ``"00:03:00"`` or ``"01:00:00:00"`` ([DD:]HH:MM:SS).

    >>> parse_duration_s("00:03:00"), parse_duration_s("90"), parse_duration_s("1:00:00:00")
    (180.0, 90.0, 86400.0)
    """
    text = str(text).strip()
    if re.fullmatch(r"\d+(:\d{1,2}){2,3}", text):
        parts = [int(p) for p in text.split(":")]
        days, rest = (parts[0], parts[1:]) if len(parts) == 4 else (0, parts)
        hours, minutes, seconds = rest
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"expected seconds or [DD:]HH:MM:SS, got {text!r}") from None


def _parse_text(name: str, annotation: Any, text: str) -> Any:
    """A flag's text as the field's type: a number, a choice of its Literal, or text."""
    if name == "max_time":
        return parse_duration_s(text)
    if name == "devices":
        return text if text == "auto" else int(text)
    choices = field_choices(annotation)
    kinds = {type(c) for c in choices} if choices else set(base_types(annotation)[0])
    if int in kinds and str not in kinds:
        return int(text)
    if float in kinds:
        return float(text)
    return text


def _converter(section: str, f: Field[Any], annotation: Any) -> Any:
    """argparse ``type`` for a field: parse the text, then check it like a config value."""

    def convert(text: str) -> Any:
        try:
            value = _parse_text(f.name, annotation, text)
            check_value(f.name, annotation, f.metadata, value)
            _check_registry(f.name, value)
        except (ValueError, ConfigError) as exc:
            message = str(exc) if isinstance(exc, ConfigError) else f"cannot read {text!r}"
            raise argparse.ArgumentTypeError(message.removeprefix(f"{f.name}: ")) from None
        return value

    convert.__name__ = f"{section}.{f.name}"  # argparse names it in "invalid value" errors
    return convert


def _check_registry(name: str, value: Any) -> None:
    """Values whose choices Lightning owns: the precision and the strategy."""
    if name == "precision" and value != "auto":
        from ptychopinn.device import lightning_precisions

        if value not in lightning_precisions():
            raise ConfigError(
                f"expected auto or one of {list(lightning_precisions())}, got {value!r}"
            )
    if name == "strategy" and value != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        known = StrategyRegistry.available_strategies()
        if value not in known:
            raise ConfigError(f"expected auto or one of {sorted(known)}, got {value!r}")


def _default_text(f: Field[Any]) -> str:
    default = f.default if f.default is not MISSING else None
    if default is None:
        return ""
    if isinstance(default, bool):
        return f"; default: {'on' if default else 'off'}"
    return f"; default: {default:g}" if isinstance(default, float) else f"; default: {default}"


def field_help(f: Field[Any]) -> str:
    """The field's help with its unit and default (``%`` escaped for argparse)."""
    unit = f.metadata.get("unit")
    text = f.metadata.get("help", "") + (f" [{unit}]" if unit else "") + _default_text(f)
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, exclude: tuple[str, ...] = ()) -> None:
    """One flag per config field (``dest`` = ``section.name``), grouped by section."""
    for section, cls in SECTIONS.items():
        hints = field_types(cls)
        group = parser.add_argument_group(f"{section} options (ptychopinn.config.{cls.__name__})")
        for f in fields(cls):
            if not f.metadata.get("flag", True) or f.name in exclude:
                continue
            names = spellings(f.name, f.metadata.get("aliases", ()))
            annotation = hints[f.name]
            kwargs: dict[str, Any] = {"dest": f"{section}.{f.name}", "default": None}
            if annotation is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = _converter(section, f, annotation)
                choices = field_choices(annotation)
                if choices is not None:
                    kwargs["metavar"] = "{" + ",".join(str(c) for c in choices) + "}"
            group.add_argument(*names, help=field_help(f), **kwargs)


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config values given as flags: ``{"model": {...}, "training": {...}}``."""
    out: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for dest, value in vars(args).items():
        section, _, name = dest.partition(".")
        if section in out and name and value is not None:
            out[section][name] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON config ``{"model": {...}, "training": {...}}`` as plain data."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read JSON config ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def resolve_config(
    preset: str | None,
    config_file: str | Path | None,
    flags: dict[str, dict[str, Any]],
    n: int | None = None,
) -> tuple[Config, dict[str, str]]:
    """The config of a run: recipe < JSON config < flags, with ``N`` from the data.

    Returns the config and, for each value that departs from the default recipe, where it
    came from (``section.name`` -> ``preset fast`` / ``--config`` / ``flag`` / ``data``).
    """
    from ptychopinn.config import migrate_model_section

    file_values = read_config_file(config_file) if config_file else {}
    if file_values:
        unknown = set(file_values) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"{config_file}: unknown sections {sorted(unknown)}")
        file_values = {
            "model": migrate_model_section(dict(file_values.get("model", {}))),
            "training": dict(file_values.get("training", {})),
        }
    merged, sources = resolve(preset, file_values, flags)
    model = merged.get("model", {})
    if n is not None:
        if "N" in model and model["N"] != n:
            raise ConfigError(
                f"{config_file}: model.N = {model['N']} but the data have {n}x{n} patterns"
            )
        model["N"] = n
        sources["model.N"] = "data"
    config = Config(
        model=section_from_dict(ModelConfig, model),
        training=section_from_dict(TrainingConfig, merged.get("training", {})),
    )
    return config, sources


def describe_recipe(preset: str | None, sources: dict[str, str]) -> str:
    """``overlap (the default)``, ``fast``, ``overlap with max_epochs from a flag`` ..."""
    name = preset or DEFAULT_RECIPE
    label = f"{name} (the default)" if preset is None else name
    changed = sorted(
        key.split(".", 1)[1] for key, origin in sources.items() if origin in ("flag", "--config")
    )
    return f"{label}, changed: {', '.join(changed)}" if changed else label


__all__ = [
    "RECIPES",
    "add_config_arguments",
    "config_overrides",
    "describe_recipe",
    "parse_duration_s",
    "read_config_file",
    "resolve_config",
    "spellings",
]
