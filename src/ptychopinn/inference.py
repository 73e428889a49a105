"""Inference on plain torch: bundle + scan -> stitched complex object.

:func:`reconstruct` is a pipeline of named steps: prepare the network (a copy on the device;
the bundle is left untouched), group the patterns, predict them chunk by chunk, synchronise
and stitch, choose the stitching, and build the :class:`Reconstruction`.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch

from ptychopinn.bundle import Bundle
from ptychopinn.data.dataset import GroupDataset, Normalization
from ptychopinn.data.grouping import Groups, training_groups
from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.scan import ScanData
from ptychopinn.models import prediction_support
from ptychopinn.models.base import ObjectNetwork
from ptychopinn.models.cnn import object_patches
from ptychopinn.models.diagnostics import COLLAPSE_THRESHOLD, output_variation
from ptychopinn.physics.functional import SHIFT_MARGIN_PX, object_nll, patch_weights
from ptychopinn.reconstruction import Reconstruction
from ptychopinn.stitching import CanvasGeometry, Stitcher, hilbert_order

logger = logging.getLogger(__name__)

StitchWeights = Literal["support", "probe", "intensity"]
Precision = Literal["32", "bf16"]
PhaseSync = Literal["auto", "on", "off"]

#: Network inputs per forward pass when none is given (the default network at N = 64 on two
#: CPU cores: 2,250 patterns/s in batches of 16, 2,920 of 32, 3,390 of 64, 3,320 of 256).
DEFAULT_BATCH = {"cpu": 64, "cuda": 256}
#: Patterns read, predicted, synchronised and stitched together when none is given: memory
#: is flat in the number of patterns (about 0.6 GB of working memory per chunk at N = 64).
DEFAULT_CHUNK_PATTERNS = 4096
#: Memory per canvas pixel of a reconstruction: two stitchers' sums and weights, the result,
#: and refinement's canvas, gradient, Adam moments and held-out twin (complex64).
CANVAS_BYTES_PER_PX = 160.0
#: Patches added to the canvas per call (the scatter's temporaries scale with it).
_STITCH_BATCH = 1024

__all__ = ["Reconstruction", "reconstruct", "predict_patches", "stitch_weights"]


def stitch_weights(bundle: Bundle, kind: StitchWeights = "support") -> torch.Tensor:
    """Per-pixel patch weight (N, N) on what the network predicts: flat, or the probe on it.

    ``"probe"`` weighs each pixel by the probe's amplitude ``|P|``, ``"intensity"`` by its
    intensity ``|P|^2``, ``"support"`` equally (each normalised to a maximum of 1), all zero
    outside the pixels the network predicts (:func:`~ptychopinn.models.prediction_support`).
    The network's amplitude is least reliable where the probe is weak, so weighting by the
    probe helps the stitched amplitude; its phase errors are spread more evenly over the
    patch, so the stitched phase gains from averaging more patches per pixel. The probe
    amplitude is the compromise (docs/quality_notes.md, "Stitching weights"). A bundle
    without a probe (all zeros: a module built without one) is weighted by its support.
    """
    if kind not in get_args(StitchWeights):
        raise ConfigError(
            f"stitch weights: expected one of {', '.join(get_args(StitchWeights))}, got {kind!r}"
        )
    return patch_weights(prediction_support(bundle.config.model), bundle.probe.cpu(), kind)


def support_window(bundle: Bundle) -> slice:
    """Central rows/columns of a patch that stitching needs: the prediction and a margin.

    Outside what the network predicts the patches and the stitching weights are zero, so
    phase synchronisation and stitching work on this window only (4x fewer pixels at the
    default support of N/2). The window is centred like the patch, so a window pixel ``j``
    maps to object pixel ``position - S // 2 + j``.
    """
    m = bundle.config.model
    side = min(m.N, m.predicted_px + 2 * SHIFT_MARGIN_PX)
    start = m.N // 2 - side // 2
    return slice(start, start + side)


def prepare_network(bundle: Bundle, device: torch.device | str) -> ObjectNetwork:
    """A copy of the bundle's network on ``device``, in eval mode and channels-last."""
    net = copy.deepcopy(bundle.net).to(device).eval()
    # channels-last convolutions: same values, faster on CPUs and GPUs (torch's stubs lack
    # the memory_format overload of Module.to)
    net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    net.set_probe(bundle.probe.to(device))
    return net


def predict_patches(
    net: ObjectNetwork | Bundle,
    amplitude: torch.Tensor,
    device: torch.device | str = "cpu",
    precision: Precision = "32",
) -> torch.Tensor:
    """Network forward pass: normalised amplitudes (B, C, N, N) -> complex patches (B, C, N, N).

    ``net`` is a prepared network (:func:`prepare_network`) or a bundle (prepared here).
    ``precision="bf16"`` runs the network under bfloat16 autocast (faster on CPUs with bf16
    dot products and on GPUs); the patches are complex64 either way.
    """
    if precision not in ("32", "bf16"):
        raise ConfigError(f"precision: expected '32' or 'bf16', got {precision!r}")
    if isinstance(net, Bundle):
        net = prepare_network(net, device)
    x = amplitude.to(device).contiguous(memory_format=torch.channels_last)
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        amp, phase = net(x)
    return object_patches(amp.contiguous(), phase.contiguous())


def measured_on_canvas(
    scan: ScanData,
    index: np.ndarray,
    normalization: Normalization,
    geometry: CanvasGeometry,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The patterns ``index`` as the physics compares them, and where they lie on a canvas.

    Shapes
    ------
    index : (K,) pattern indices into ``scan``
    returns measured (K, N, N) amplitudes in the normalised units of ``normalization``, and
        positions (K, 2) float64 (y, x) on the canvas of ``geometry``
    """
    measured = scan.amplitudes(index) * normalization.amplitude_factor
    positions = scan.positions_px[index] - np.asarray(geometry.origin_px, dtype=np.float64)
    return torch.from_numpy(measured).to(device), torch.from_numpy(positions).to(device)


def background_tensor(
    scan: ScanData, normalization: Normalization, device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """(N, N) the scan's detector background in the normalised units of the likelihood
    (:func:`~ptychopinn.physics.functional.with_background`), or None."""
    if scan.background is None:
        return None
    scaled = scan.background * normalization.amplitude_factor**2
    return torch.from_numpy(scaled.astype(np.float32)).to(device)


def pattern_nll(
    objects: list[torch.Tensor],
    geometry: CanvasGeometry,
    scan: ScanData,
    indices: np.ndarray,
    probe: torch.Tensor,
    normalization: Normalization,
    device: torch.device | str = "cpu",
    chunk: int = DEFAULT_CHUNK_PATTERNS,
) -> list[float]:
    """Mean Poisson negative log-likelihood of the patterns ``indices`` under each object.

    The training loss (:func:`~ptychopinn.physics.functional.object_nll`, up to the
    data-only constant) of the patterns the objects predict through ``probe``, as in
    refinement; lower is better. The patterns are read ``chunk`` at a time.

    Shapes
    ------
    objects : each (H, W) complex on ``geometry``
    indices : (K,) pattern indices into ``scan``
    probe : (P, N, N) complex probe in the normalised units of ``normalization``
    """
    probe = probe.to(device=device, dtype=torch.complex64)
    objects = [obj.to(device=device, dtype=torch.complex64) for obj in objects]
    good = scan.good_pixels
    mask = None if good is None else torch.from_numpy(good).to(device)
    background = background_tensor(scan, normalization, device)
    total = np.zeros(len(objects))
    for start in range(0, len(indices), chunk):
        index = indices[start : start + chunk]
        measured, pos = measured_on_canvas(scan, index, normalization, geometry, device)
        for i, obj in enumerate(objects):
            nll = object_nll(
                obj, pos, probe, measured, normalization.intensity_scale, mask=mask,
                background=background,
            )  # fmt: skip
            total[i] += float(nll) * len(index)
    return [float(v) for v in total / max(len(indices), 1)]


@dataclass
class _Stitching:
    """The canvases of one reconstruction and the bookkeeping of its chunks."""

    stitchers: dict[str, Stitcher]
    weight: torch.Tensor
    window: slice
    chunked: bool
    predict_s: float = 0.0
    n_chunks: int = 0
    variation: float | None = None
    nll: dict[str, float] = field(default_factory=dict)
    signal: bool = False  # any pattern with a photon


def inference_groups(bundle: Bundle, scan: ScanData, n_groups: int | None) -> Groups:
    """The network inputs of a scan: one per pattern (with its channel neighbours)."""
    m = bundle.config.model
    return training_groups(
        scan.positions_px, m.gridsize, 1, 1, n_groups, bundle.config.training.seed, scan.scan_index
    )


def _stitching(
    bundle: Bundle,
    geometry: CanvasGeometry,
    weights: StitchWeights,
    synchronize: PhaseSync,
    chunked: bool,
    device: torch.device | str,
) -> _Stitching:
    """Which canvases to stitch: synchronised phases, the network's own, or both."""
    window = support_window(bundle)
    weight = stitch_weights(bundle, weights)[window, window]
    if synchronize == "auto" and bundle.config.model.C > 1:  # a channel model: by likelihood
        kinds: tuple[str, ...] = ("synchronised", "network")
    else:
        kinds = ("network",) if synchronize == "off" else ("synchronised",)
    stitchers = {kind: Stitcher(geometry, weight, device=device) for kind in kinds}
    return _Stitching(stitchers, weight, window, chunked)


def _predict_chunk(
    net: ObjectNetwork,
    amplitude: torch.Tensor,
    state: _Stitching,
    batch_size: int,
    device: torch.device | str,
    precision: Precision,
) -> torch.Tensor:
    """Predict one chunk's inputs (B, C, N, N) -> patches (B * C, S, S) on the window."""
    start_time = time.perf_counter()
    state.signal = state.signal or bool((amplitude > 0).any())
    out = []
    for start in range(0, amplitude.shape[0], batch_size):
        patches = predict_patches(net, amplitude[start : start + batch_size], device, precision)
        patches = patches[..., state.window, state.window]  # (b, C, S, S)
        out.append(patches.reshape(-1, *patches.shape[-2:]).cpu())
    state.predict_s += time.perf_counter() - start_time
    return torch.cat(out)


def _add_chunk(
    state: _Stitching, patches: torch.Tensor, positions: np.ndarray, device: str
) -> None:
    """Add a chunk's patches to each canvas (synchronised, or as the network made them)."""
    if state.variation is None:  # collapse check on the first chunk (up to chunk_patterns)
        state.variation = float(output_variation(patches, state.weight))
    if "synchronised" in state.stitchers:
        state.stitchers["synchronised"].add_synchronized(
            patches, positions, hold_unanchored=state.chunked
        )
    if "network" in state.stitchers:
        for start in range(0, patches.shape[0], _STITCH_BATCH):
            state.stitchers["network"].add(
                patches[start : start + _STITCH_BATCH].to(device),
                torch.from_numpy(positions[start : start + _STITCH_BATCH]),
            )
    state.n_chunks += 1


def _choose(
    state: _Stitching,
    geometry: CanvasGeometry,
    scan: ScanData,
    used: np.ndarray,
    bundle: Bundle,
    normalization: Normalization,
    device: str,
    chunk: int,
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The stitching kept: the only one, or the one the measured patterns are likelier under."""
    stitched = {name: stitcher.result() for name, stitcher in state.stitchers.items()}
    if len(stitched) > 1:
        objects = [obj for obj, _ in stitched.values()]
        values = pattern_nll(
            objects, geometry, scan, used, bundle.probe, normalization, device, chunk
        )
        state.nll = dict(zip(stitched, values, strict=True))
        own, synced = state.nll["network"], state.nll["synchronised"]
        logger.info(
            "phases: %s (Poisson NLL per pattern %.4g lower than with %s)",
            "synchronised" if synced < own else "the network's own",
            abs(own - synced),
            "the network's own" if synced < own else "synchronised ones",
        )
    chosen = min(state.nll, key=state.nll.__getitem__) if state.nll else next(iter(stitched))
    obj, coverage = stitched[chosen]
    return chosen, obj, coverage


def reconstruct(
    bundle: Bundle,
    scan: ScanData,
    n_groups: int | None = None,
    batch_size: int | None = None,
    device: torch.device | str = "cpu",
    weights: StitchWeights = "probe",
    synchronize: PhaseSync = "auto",
    chunk_patterns: int = DEFAULT_CHUNK_PATTERNS,
    precision: Precision = "32",
    max_memory_gb: float | None = None,
) -> Reconstruction:
    """Predict every pattern of ``scan`` (or ``n_groups`` of them) and stitch: the network alone.

    The normalisation fixed at training time is carried over (rescaled by the probe power
    when the scan's probe differs), so inference reproduces training. Each pattern is one
    network input (with its channel neighbours for a gridsize > 1 model); ``batch_size``
    inputs go through the network at a time (default :data:`DEFAULT_BATCH` for the device).

    ``synchronize="on"`` aligns the phase of each predicted patch to its neighbours before
    stitching (:func:`~ptychopinn.stitching.synchronize_phases`); ``"off"`` stitches the
    network's phases as they are. A network that sees one pattern at a time cannot know its
    patch's constant phase (one pattern does not determine it), so ``"auto"`` synchronises.
    A channel model (gridsize > 1) sees its neighbours and was trained to agree with them
    on the phase; for it ``"auto"`` stitches both ways and keeps the one under which the
    measured patterns are more likely (one more pass over the patterns).

    Memory is flat in the number of patterns apart from the positions and the canvas: the
    inputs are taken about ``chunk_patterns`` patterns at a time, in an order that keeps
    each chunk compact on the object (a Hilbert curve through the group centres); each
    chunk is predicted, synchronised among itself and against the canvas so far, and added.
    A canvas that would exceed ``max_memory_gb`` (default: half the memory) is refused
    before it is allocated. The bundle is not modified.
    """
    if not isinstance(chunk_patterns, int) or chunk_patterns < 1:
        raise ConfigError(f"chunk_patterns: expected a positive integer, got {chunk_patterns!r}")
    if synchronize not in get_args(PhaseSync):
        raise ConfigError(f"synchronize: expected 'auto', 'on' or 'off', got {synchronize!r}")
    bundle.check_compatible(N=scan.N, source=scan.source)
    device_type = torch.device(device).type
    batch_size = batch_size or DEFAULT_BATCH.get(device_type, DEFAULT_BATCH["cuda"])
    net = prepare_network(bundle, device)
    normalization = bundle.normalization.for_scan(scan)
    groups = inference_groups(bundle, scan, n_groups)
    used = np.unique(groups.indices)
    geometry = CanvasGeometry.covering(
        scan.positions_px[used], bundle.config.model.N, CANVAS_BYTES_PER_PX, scan.source,
        max_memory_gb,
    )  # fmt: skip
    chunked = int(groups.indices.size) > chunk_patterns
    state = _stitching(bundle, geometry, weights, synchronize, chunked, device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        _predict_and_stitch(
            net, scan, groups, normalization, state, batch_size, chunk_patterns, device, precision
        )
        if not state.signal:
            raise DataError(f"{scan.source}: diffraction: all patterns are zero")
        chosen, obj, coverage = _choose(
            state, geometry, scan, used, bundle, normalization, str(device), chunk_patterns
        )
    return _reconstruction(
        bundle, scan, groups, geometry, state, chosen, obj, coverage, time.perf_counter() - t0,
        {"stitch_weights": weights, "precision": precision, "chunk_patterns": chunk_patterns},
    )  # fmt: skip


def _predict_and_stitch(
    net: ObjectNetwork,
    scan: ScanData,
    groups: Groups,
    normalization: Normalization,
    state: _Stitching,
    batch_size: int,
    chunk_patterns: int,
    device: torch.device | str,
    precision: Precision,
) -> None:
    """Predict the inputs chunk by chunk (along a Hilbert curve when chunked) and stitch."""
    dataset = GroupDataset(scan, groups, normalization, cache=False)  # each pattern read once
    order = hilbert_order(groups.centers_px) if state.chunked else np.arange(len(groups))
    per_chunk = max(1, chunk_patterns // groups.channels)
    for chunk_start in range(0, len(order), per_chunk):
        rows = order[chunk_start : chunk_start + per_chunk]
        patches = _predict_chunk(
            net, dataset.group_amplitudes(rows), state, batch_size, device, precision
        )
        positions = scan.positions_px[groups.indices[rows].reshape(-1)]  # (B*C, 2)
        _add_chunk(state, patches, positions, str(device))


def _reconstruction(
    bundle: Bundle,
    scan: ScanData,
    groups: Groups,
    geometry: CanvasGeometry,
    state: _Stitching,
    chosen: str,
    obj: torch.Tensor,
    coverage: torch.Tensor,
    elapsed: float,
    settings: dict[str, object],
) -> Reconstruction:
    """The network's :class:`Reconstruction`, with a warning if the network has collapsed."""
    m = bundle.config.model
    used = np.unique(groups.indices)
    n_patches = int(groups.indices.size)
    collapsed = state.variation is not None and state.variation < COLLAPSE_THRESHOLD
    if collapsed:
        logger.warning(
            "the network predicts nearly the same patch for every pattern (output variation "
            "%.2g < %.0e): the model has collapsed and its reconstruction is a tiled constant",
            state.variation,
            COLLAPSE_THRESHOLD,
        )
    logger.info(
        "network: %d patterns (%d patches, %d chunks) in %.2f s (%.0f patterns/s, network "
        "%.2f s)",
        len(used), n_patches, state.n_chunks, elapsed, n_patches / max(elapsed, 1e-9),
        state.predict_s,
    )  # fmt: skip
    return Reconstruction(
        object=obj.cpu().numpy().astype(np.complex64, copy=False),
        origin_px=geometry.origin_px,
        coverage=coverage.cpu().numpy().astype(np.float32, copy=False),
        positions_px=scan.positions_px[used],
        N=m.N,
        probe=bundle.probe.detach().cpu().numpy().astype(np.complex64),
        pixel_size_m=scan.pixel_size_m,
        collapsed=collapsed,
        metadata={
            "gridsize": m.gridsize,
            "n_groups": len(groups),
            "n_patterns": int(len(used)),
            "n_patches": n_patches,
            **settings,
            "phases": chosen,
            "phase_nll": state.nll or None,
            "output_variation": state.variation,
            "n_chunks": state.n_chunks,
            "elapsed_s": elapsed,
            "network_s": state.predict_s,
            "source": scan.source,
            "bundle_created": bundle.manifest.get("created"),
        },
    )
