"""The model bundle ``wts.h5.zip``: everything inference needs, loaded without running code.

Members
-------
``manifest.json``       format, format_version, backend, model names, package version, time
``config.json``         the full :class:`~ptychopinn.config.Config`
``normalization.json``  :class:`~ptychopinn.data.dataset.Normalization`
``weights.safetensors`` network weights
``probe.safetensors``   the forward model's probe, (P, N, N, 2) float32 (real, imaginary)

The historical name ``wts.h5.zip`` is kept for users' scripts; the content is a
plain zip of JSON and safetensors (no pickle, no HDF5).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ptychopinn import __version__
from ptychopinn.config import Config, migrate_saved_config
from ptychopinn.data.dataset import Normalization
from ptychopinn.errors import BundleError, ConfigError, DataError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.paths import check_regular_file
from ptychopinn.models import build_network, migrate_state_dict
from ptychopinn.models.base import ObjectNetwork

FORMAT = "ptychopinn-bundle"
FORMAT_VERSION = 1
BUNDLE_NAME = "wts.h5.zip"
MODEL_NAMES = ("diffraction_to_obj",)

_MEMBERS = {
    "manifest.json": 1 << 20,
    "config.json": 1 << 20,
    "normalization.json": 1 << 20,
    "weights.safetensors": 4 << 30,
    "probe.safetensors": 1 << 30,
}
_MAX_COMPRESSION_RATIO = 200
_TENSORFLOW_MARKERS = ("manifest.dill", "model.keras", "saved_model.pb", "params.dill")


@dataclass
class Bundle:
    """A trained model ready for inference.

    Attributes
    ----------
    config : the training configuration
    normalization : data statistics fixed at training time
    net : the network in eval mode
    probe : (P, N, N) complex64, the forward model's probe (normalised units)
    manifest : the manifest as stored
    """

    config: Config
    normalization: Normalization
    net: ObjectNetwork
    probe: torch.Tensor
    manifest: dict[str, Any]

    def check_compatible(
        self, N: int | None = None, gridsize: int | None = None, source: str = ""
    ) -> None:
        """Raise :class:`BundleError` when a requested N or gridsize differs from the bundle's."""
        m = self.config.model
        where = f"{source}: " if source else ""
        if N is not None and N != m.N:
            raise BundleError(f"{where}bundle was trained with N = {m.N}; the request has N = {N}")
        if gridsize is not None and gridsize != m.gridsize:
            raise BundleError(
                f"{where}bundle was trained with gridsize = {m.gridsize}; the request has gridsize = {gridsize}"
            )


def save_bundle(
    path: str | os.PathLike[str],
    config: Config,
    normalization: Normalization,
    net: torch.nn.Module,
    probe: torch.Tensor,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle atomically. ``probe`` is the forward model's (P, N, N) complex probe.

    ``run`` (plain data: the recipe, the device and precision it trained on, its final
    metrics) goes into the manifest, so a bundle says how it was made.
    """
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "backend": "pytorch",
        "models": list(MODEL_NAMES),
        "package": "ptychopinn",
        "package_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "N": config.model.N,
        "gridsize": config.model.gridsize,
        "run": run or {},
    }
    weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    probe_ri = torch.view_as_real(probe.detach().cpu().to(torch.complex64)).contiguous()
    target = Path(path)
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", json.dumps(manifest, indent=2))
        zf.writestr("config.json", json.dumps(config.to_dict(), indent=2))
        zf.writestr("normalization.json", json.dumps(normalization.to_dict(), indent=2))
        zf.writestr("weights.safetensors", st_save(weights))
        zf.writestr("probe.safetensors", st_save({"probe": probe_ri}))
    return target


def resolve_bundle_path(path: str | os.PathLike[str]) -> Path:
    """Accept the bundle file itself or a run directory holding ``wts.h5.zip``."""
    p = Path(path)
    if p.is_dir():
        candidate = p / BUNDLE_NAME
        if not candidate.exists():
            raise BundleError(f"{p}: directory holds no {BUNDLE_NAME}")
        return check_regular_file(candidate, "a model bundle", BundleError)
    if not p.exists():
        raise BundleError(f"{p}: model bundle not found")
    return check_regular_file(p, "a model bundle", BundleError)


def load_bundle(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Bundle:
    """Load a bundle safely (no code execution, strict weights).

    Raises
    ------
    BundleError
        Not a zip, truncated or corrupt, unsafe member names, oversized members,
        a TensorFlow bundle, an unknown or newer format, or weights that do not fit.
    """
    p = resolve_bundle_path(path)
    if not zipfile.is_zipfile(p):
        raise BundleError(f"{p}: not a model bundle (not a zip archive)")
    try:
        with zipfile.ZipFile(p) as zf:
            members = _checked_members(p, zf)
            manifest = _json(p, zf, "manifest.json", members)
            _check_manifest(p, manifest)
            config_data = _json(p, zf, "config.json", members)
            norm_data = _json(p, zf, "normalization.json", members)
            weights = st_load(_read(p, zf, "weights.safetensors", members))
            probe_ri = st_load(_read(p, zf, "probe.safetensors", members))["probe"]
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise BundleError(
            f"{p}: corrupt or truncated bundle ({type(exc).__name__}: {exc})"
        ) from exc
    except BundleError:
        raise
    except Exception as exc:  # safetensors / json parse errors of damaged content
        raise BundleError(f"{p}: damaged bundle content ({type(exc).__name__}: {exc})") from exc
    try:
        config = Config.from_dict(migrate_saved_config(config_data))
        normalization = Normalization.from_dict(norm_data)
    except (ConfigError, DataError, KeyError, TypeError) as exc:
        raise BundleError(f"{p}: config.json/normalization.json: {exc}") from exc
    if normalization.N != config.model.N:
        raise BundleError(
            f"{p}: normalization.json has N = {normalization.N} but config.json {config.model.N}"
        )
    weights = migrate_state_dict(weights)
    _check_weights(p, config, weights)
    probe = _checked_probe(p, probe_ri, config.model.N)
    net = build_network(config.model)
    net.load_state_dict(weights, strict=True)
    net.eval().to(map_location)
    probe = probe.to(map_location)
    net.set_probe(probe)
    return Bundle(config, normalization, net, probe, manifest)


def _check_weights(p: Path, config: Config, weights: dict[str, torch.Tensor]) -> None:
    """The weights fit the config's network (checked on the meta device: nothing is
    allocated for a config that asks for a huge network) and are finite."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_network(config.model).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in weights.items()}
    if got != expected:
        missing = sorted(set(expected) - set(got))
        unexpected = sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        detail = "; ".join(
            f"{what}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
            for what, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("other shapes", wrong),
            )
            if keys
        )
        raise BundleError(
            f"{p}: weights do not fit the network of its config (N = {config.model.N}, "
            f"gridsize = {config.model.gridsize}): {detail}"
        )
    for key, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise BundleError(f"{p}: weights: {key} holds NaN or Inf")


def _checked_probe(p: Path, probe_ri: torch.Tensor, n: int) -> torch.Tensor:
    """The stored (P, N, N, 2) probe as complex (P, N, N): at least one mode, finite, not zero."""
    if probe_ri.ndim != 4 or probe_ri.shape[-1] != 2 or tuple(probe_ri.shape[1:3]) != (n, n):
        raise BundleError(
            f"{p}: probe: expected shape (P, {n}, {n}, 2) (real, imaginary), got "
            f"{tuple(probe_ri.shape)}"
        )
    if probe_ri.shape[0] < 1:
        raise BundleError(f"{p}: probe: expected at least one mode, got none")
    probe = torch.view_as_complex(probe_ri.float().contiguous())
    if not bool(torch.isfinite(probe_ri).all()):
        raise BundleError(f"{p}: probe holds NaN or Inf")
    if not bool((probe.abs() > 0).any()):
        raise BundleError(f"{p}: probe is all zero")
    return probe


def _checked_members(p: Path, zf: zipfile.ZipFile) -> set[str]:
    names = zf.namelist()
    if any(PurePosixPath(n).name in _TENSORFLOW_MARKERS for n in names):
        raise BundleError(
            f"{p}: this is a TensorFlow PtychoPINN bundle (manifest.dill / model.keras); "
            "it cannot be loaded by the PyTorch backend — retrain with ptychopinn train"
        )
    for info in zf.infolist():
        name = info.filename
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name or ":" in name:
            raise BundleError(f"{p}: unsafe member path {name!r} in bundle")
        if name not in _MEMBERS:
            raise BundleError(f"{p}: unexpected member {name!r}; expected {sorted(_MEMBERS)}")
        if info.file_size > _MEMBERS[name]:
            raise BundleError(
                f"{p}: member {name} is {info.file_size} bytes, over the limit of {_MEMBERS[name]}"
            )
        if info.compress_size and info.file_size / info.compress_size > _MAX_COMPRESSION_RATIO:
            raise BundleError(
                f"{p}: member {name} expands {info.file_size / info.compress_size:.0f}x "
                f"(limit {_MAX_COMPRESSION_RATIO}x): refusing a possible zip bomb"
            )
    missing = set(_MEMBERS) - set(names)
    if missing:
        raise BundleError(f"{p}: bundle is missing {sorted(missing)}")
    return set(names)


def _read(p: Path, zf: zipfile.ZipFile, name: str, members: set[str]) -> bytes:
    limit = _MEMBERS[name]
    with zf.open(name) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{p}: member {name} exceeds {limit} bytes")
    return data


def _json(p: Path, zf: zipfile.ZipFile, name: str, members: set[str]) -> dict[str, Any]:
    try:
        value = json.loads(_read(p, zf, name, members).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{p}: {name} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise BundleError(f"{p}: {name}: expected a JSON object")
    return value


def _check_manifest(p: Path, manifest: dict[str, Any]) -> None:
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{p}: manifest format: expected {FORMAT!r}, got {manifest.get('format')!r}"
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(
            f"{p}: manifest format_version: expected an integer >= 1, got {version!r}"
        )
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{p}: bundle format_version {version} is newer than this ptychopinn "
            f"({__version__}) supports ({FORMAT_VERSION}); upgrade ptychopinn"
        )
    if manifest.get("backend") != "pytorch":
        raise BundleError(
            f"{p}: manifest backend: expected 'pytorch', got {manifest.get('backend')!r}"
        )
