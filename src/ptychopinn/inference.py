"""Inference on plain torch: bundle + scan -> stitched complex object."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch

from ptychopinn.bundle import Bundle
from ptychopinn.data.dataset import GroupDataset, Normalization
from ptychopinn.data.grouping import group_positions
from ptychopinn.errors import ConfigError
from ptychopinn.io.atomic import atomic_path
from ptychopinn.io.npz import write_npz
from ptychopinn.io.scan import ScanData
from ptychopinn.models.cnn import object_patches
from ptychopinn.models.diagnostics import COLLAPSE_THRESHOLD, output_variation
from ptychopinn.physics.functional import (
    SHIFT_MARGIN_PX,
    object_nll,
    patch_weights,
    square_support,
)
from ptychopinn.stitching import CanvasGeometry, Stitcher, hilbert_order

logger = logging.getLogger(__name__)

StitchWeights = Literal["support", "probe", "intensity"]
Precision = Literal["32", "bf16"]
PhaseSync = Literal["auto", "on", "off"]

#: Groups per forward pass when none is given: small batches keep a CPU's activations in
#: cache (at N = 64, 32 groups run about twice as fast per pattern as 256); a GPU wants many.
DEFAULT_BATCH = {"cpu": 32, "cuda": 256}
#: Patterns read, predicted, synchronised and stitched together when none is given: memory
#: is flat in the number of patterns (about 0.6 GB of working memory per chunk at N = 64).
DEFAULT_CHUNK_PATTERNS = 4096
#: Patches added to the canvas per call (the scatter's temporaries scale with it).
_STITCH_BATCH = 1024


@dataclass
class Reconstruction:
    """A stitched reconstruction on the object pixel grid.

    Shapes
    ------
    object : (H, W) complex64; canvas pixel (r, c) is object pixel (r, c) + origin_px
    coverage : (H, W) float32, summed stitching weight (0 = not reconstructed)
    positions_px : (K, 2) float64, (y, x) object pixels of the patterns used
    """

    object: np.ndarray
    origin_px: tuple[int, int]
    coverage: np.ndarray
    positions_px: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def amplitude(self) -> np.ndarray:
        return np.abs(self.object)

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.object)

    def on_object_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """The reconstruction pasted into an array of the object's shape (zeros elsewhere)."""
        out = np.zeros(shape, dtype=np.complex64)
        r0, c0 = self.origin_px
        h, w = self.object.shape
        src_r0, src_c0 = max(0, -r0), max(0, -c0)
        dst_r0, dst_c0 = max(0, r0), max(0, c0)
        dst_r1, dst_c1 = min(shape[0], r0 + h), min(shape[1], c0 + w)
        if dst_r1 > dst_r0 and dst_c1 > dst_c0:
            out[dst_r0:dst_r1, dst_c0:dst_c1] = self.object[
                src_r0 : src_r0 + dst_r1 - dst_r0, src_c0 : src_c0 + dst_c1 - dst_c0
            ]
        return out

    def save(self, out_dir: str | Path) -> list[Path]:
        """Write ``reconstruction.npz`` and the amplitude and phase PNGs atomically."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_npz(
            out / "reconstruction.npz",
            {
                "object": self.object,
                "amplitude": self.amplitude.astype(np.float32),
                "phase": self.phase.astype(np.float32),
                "coverage": self.coverage,
                "origin_px": np.asarray(self.origin_px, dtype=np.int64),
                "positions_px": self.positions_px,
                "xcoords": self.positions_px[:, 1],
                "ycoords": self.positions_px[:, 0],
                "metadata": np.asarray(json.dumps(self.metadata)),
            },
        )
        paths = [out / "reconstruction.npz"]
        mask = self.coverage > 0
        for name, image, cmap in (
            ("reconstructed_amplitude.png", self.amplitude, "gray"),
            ("reconstructed_phase.png", np.where(mask, self.phase, 0.0), "twilight"),
        ):
            save_image(out / name, image, cmap, mask)
            paths.append(out / name)
        return paths


def save_image(path: Path, image: np.ndarray, cmap: str, mask: np.ndarray | None = None) -> None:
    """Write ``image`` as a PNG, one pixel per object pixel, with a colour-bar strip (atomic).

    The display range (0.5 and 99.5 percentiles over ``mask``) is written into the PNG's
    text chunks (``Title``, ``Comment``) and the strip on the right runs from the top of the
    range (top) to the bottom. No figure is drawn: this is about 20x faster than a
    matplotlib figure and keeps every pixel of a large object.
    """
    from matplotlib import colormaps
    from PIL import Image, PngImagePlugin

    values = image[mask] if mask is not None and mask.any() else image
    vmin, vmax = (float(v) for v in np.percentile(values, [0.5, 99.5])) if values.size else (0, 1)
    scaled = np.clip((image - vmin) / ((vmax - vmin) or 1.0), 0.0, 1.0)
    colour = colormaps[cmap]
    rgb = colour(scaled, bytes=True)[..., :3]  # (H, W, 3) uint8
    h, w = image.shape
    bar_width = max(4, w // 24)
    bar = colour(np.linspace(1.0, 0.0, h)[:, None].repeat(bar_width, axis=1), bytes=True)
    gap = np.full((h, max(2, bar_width // 3), 3), 255, dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", path.stem.replace("_", " "))
    info.add_text(
        "Comment",
        f"colour map {cmap}, range {vmin:.6g} to {vmax:.6g} (colour bar on the right, top = max)",
    )
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([rgb, gap, bar[..., :3]], axis=1)).save(
            tmp, format="PNG", pnginfo=info
        )


def stitch_weights(bundle: Bundle, kind: StitchWeights = "support") -> torch.Tensor:
    """Per-pixel patch weight (N, N) on the object support: flat, or the probe on it.

    ``"probe"`` weighs each pixel by the probe's amplitude ``|P|``, ``"intensity"`` by its
    intensity ``|P|^2``, ``"support"`` equally (each normalised to a maximum of 1). The
    network's amplitude is least reliable where the probe is weak, so weighting by the probe
    helps the stitched amplitude; its phase errors are spread more evenly over the patch, so
    the stitched phase gains from averaging more patches per pixel. The probe amplitude is
    the compromise: on the seven models measured it stitched the synchronised phase better
    than the intensity on all, and the amplitude on all but one (docs/quality_notes.md,
    "Stitching weights"). A bundle without a
    probe (all zeros: a module built without one) is weighted by its support.
    """
    if kind not in get_args(StitchWeights):
        raise ConfigError(
            f"stitch weights: expected one of {', '.join(get_args(StitchWeights))}, got {kind!r}"
        )
    m = bundle.config.model
    support = square_support(m.N, m.support_px) if not m.probe_big else torch.ones(m.N, m.N)
    return patch_weights(support, bundle.probe.cpu(), kind)


def support_window(bundle: Bundle) -> slice:
    """Central rows/columns of a patch that stitching needs: the support and a margin.

    Outside the object support the network's patches and the stitching weights are zero, so
    phase synchronisation and stitching work on this window only (4x fewer pixels at the
    default support of N/2). The window is centred like the patch, so a window pixel ``j``
    maps to object pixel ``position - S // 2 + j``.
    """
    m = bundle.config.model
    if m.probe_big:
        return slice(None)
    side = min(m.N, m.support_px + 2 * SHIFT_MARGIN_PX)
    start = m.N // 2 - side // 2
    return slice(start, start + side)


def predict_patches(
    bundle: Bundle,
    amplitude: torch.Tensor,
    device: torch.device | str = "cpu",
    precision: Precision = "32",
) -> torch.Tensor:
    """Network forward pass: normalised amplitudes (B, C, N, N) -> complex patches (B, C, N, N).

    Runs in channels-last memory format (faster convolutions on CPUs and GPUs, same values).
    ``precision="bf16"`` runs the network under bfloat16 autocast (1.5-2x faster on CPUs
    with bf16 dot products and on GPUs); the patches are float32/complex64 either way.
    """
    if precision not in ("32", "bf16"):
        raise ConfigError(f"precision: expected '32' or 'bf16', got {precision!r}")
    x = amplitude.to(device).contiguous(memory_format=torch.channels_last)
    device_type = torch.device(device).type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        amp, phase = bundle.net(x)
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
    total = np.zeros(len(objects))
    for start in range(0, len(indices), chunk):
        index = indices[start : start + chunk]
        measured, pos = measured_on_canvas(scan, index, normalization, geometry, device)
        for i, obj in enumerate(objects):
            nll = object_nll(obj, pos, probe, measured, normalization.intensity_scale)
            total[i] += float(nll) * len(index)
    return [float(v) for v in total / max(len(indices), 1)]


def _log_phase_choice(nll: dict[str, float]) -> None:
    """Say which stitching the patterns preferred, and by how much."""
    own, synced = nll["network"], nll["synchronised"]
    logger.info(
        "phases: %s (Poisson NLL per pattern %.4g lower than with %s)",
        "synchronised" if synced < own else "the network's own",
        abs(own - synced),
        "the network's own" if synced < own else "synchronised ones",
    )


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
) -> Reconstruction:
    """Reconstruct every pattern of ``scan`` (or ``n_groups`` groups) and stitch.

    The normalisation fixed at training time is carried over (rescaled by the
    probe power when the scan's probe differs), so inference reproduces training.
    ``batch_size`` groups go through the network at a time (default
    :data:`DEFAULT_BATCH` for the device). A ``per_pattern`` network's patch does not depend
    on its group, so its groups are single patterns (each pattern predicted once).

    ``synchronize="on"`` aligns the phase of each predicted patch to its neighbours before
    stitching (see :func:`synchronize_phases`); ``"off"`` stitches the network's phases as
    they are. A network that sees one pattern at a time (gridsize 1, or ``per_pattern``
    even when trained on groups) cannot know its patch's constant phase: one pattern does
    not determine it, so ``"auto"`` synchronises. A channel model at gridsize > 1 sees a
    group's patterns together and was trained to agree with its neighbours on the phase
    itself; synchronising its patches can only add up their local phase-gradient errors over
    the scan, while its own phases are off by a small error of each patch that stitching
    averages. Which is better depends on the model and the object, so for such a model
    ``"auto"`` stitches both ways and keeps the one under which the measured patterns are
    more likely (Poisson likelihood with the bundle's probe; one more pass over the
    patterns).
    ``precision`` is that of the network (see :func:`predict_patches`).

    Memory is flat in the number of patterns apart from the positions and the canvas:
    the groups are taken about ``chunk_patterns`` patterns at a time, in an order that keeps
    each chunk compact on the object (a Hilbert curve through the group centres). Each
    chunk's patterns are read, predicted, synchronised among themselves and against the
    canvas stitched so far (one common phase, then each patch against its neighbours and the
    canvas), and added to the canvas. A scan that fits in one chunk is processed all at once,
    in its own order.
    """
    if not isinstance(chunk_patterns, int) or chunk_patterns < 1:
        raise ConfigError(f"chunk_patterns: expected a positive integer, got {chunk_patterns!r}")
    if synchronize not in ("auto", "on", "off"):
        raise ConfigError(f"synchronize: expected 'auto', 'on' or 'off', got {synchronize!r}")
    m = bundle.config.model
    bundle.check_compatible(N=scan.N, source=scan.source)
    bundle.net.to(device).eval()
    # channels-last convolutions: same values, faster on CPUs and GPUs (torch's stubs lack
    # the memory_format overload of Module.to)
    bundle.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if batch_size is None:
        batch_size = DEFAULT_BATCH.get(torch.device(device).type, DEFAULT_BATCH["cuda"])
    normalization = bundle.normalization.for_scan(scan)
    # a per-pattern network's patch does not depend on the group: predict each pattern once
    gridsize = 1 if m.per_pattern else m.gridsize
    groups = group_positions(
        scan.positions_px,
        gridsize,
        n_groups,
        bundle.config.training.seed,
        scan.scan_index,
        m.group_stride,
    )
    dataset = GroupDataset(scan, groups, normalization, cache=False)  # each pattern read once
    used = np.unique(groups.indices)
    geometry = CanvasGeometry.covering(scan.positions_px[used], m.N)
    weight = stitch_weights(bundle, weights)
    window = support_window(bundle)
    weight = weight[window, window]
    if synchronize == "auto" and gridsize > 1:  # a channel model: by likelihood, below
        kinds: tuple[str, ...] = ("synchronised", "network")
    else:
        kinds = ("network",) if synchronize == "off" else ("synchronised",)
    stitchers = {kind: Stitcher(geometry, weight, device=device) for kind in kinds}
    n_patterns = int(groups.indices.size)
    per_group = int(groups.indices.shape[1])
    chunked = n_patterns > chunk_patterns
    order = hilbert_order(groups.centers_px) if chunked else np.arange(len(groups))
    chunk_groups = max(1, chunk_patterns // per_group)
    t0 = time.perf_counter()
    predict_s = 0.0
    n_chunks = 0
    variation: float | None = None
    with torch.inference_mode():
        for chunk_start in range(0, len(order), chunk_groups):
            rows = order[chunk_start : chunk_start + chunk_groups]
            amplitude = dataset.group_amplitudes(rows)  # (B, C, N, N), B <= chunk_groups
            tp = time.perf_counter()
            chunks = []
            for start in range(0, len(rows), batch_size):
                patches = predict_patches(
                    bundle, amplitude[start : start + batch_size], device, precision
                )
                patches = patches[..., window, window]  # (b, C, S, S), S = support + margin
                chunks.append(patches.reshape(-1, *patches.shape[-2:]).cpu())
            predict_s += time.perf_counter() - tp
            patches = torch.cat(chunks)  # (B*C, S, S)
            if variation is None:  # collapse check on the first chunk (up to chunk_patterns)
                variation = float(output_variation(patches, weight))
            positions = scan.positions_px[groups.indices[rows].reshape(-1)]  # (B*C, 2)
            if "synchronised" in stitchers:
                stitchers["synchronised"].add_synchronized(
                    patches, positions, hold_unanchored=chunked
                )
            if "network" in stitchers:
                for start in range(0, patches.shape[0], _STITCH_BATCH):
                    stitchers["network"].add(
                        patches[start : start + _STITCH_BATCH].to(device),
                        torch.from_numpy(positions[start : start + _STITCH_BATCH]),
                    )
            n_chunks += 1
        stitched = {name: stitcher.result() for name, stitcher in stitchers.items()}
        nll: dict[str, float] = {}
        if len(stitched) > 1:
            objects = [obj for obj, _ in stitched.values()]
            values = pattern_nll(
                objects, geometry, scan, used, bundle.probe, normalization, device, chunk_patterns
            )
            nll = dict(zip(stitched, values, strict=True))
            _log_phase_choice(nll)
        chosen = min(nll, key=nll.__getitem__) if nll else next(iter(stitched))
        obj, coverage = stitched[chosen]
    elapsed = time.perf_counter() - t0
    collapsed = variation is not None and variation < COLLAPSE_THRESHOLD
    if collapsed:
        logger.warning(
            "the network predicts nearly the same patch for every pattern (output variation "
            "%.2g < %.0e): the model has collapsed and its reconstruction is a tiled constant",
            variation,
            COLLAPSE_THRESHOLD,
        )
    logger.info(
        "reconstructed %d groups (%d patches, %d chunks) in %.2f s (%.0f patterns/s, "
        "network %.2f s)",
        len(groups),
        n_patterns,
        n_chunks,
        elapsed,
        n_patterns / max(elapsed, 1e-9),
        predict_s,
    )
    return Reconstruction(
        object=obj.cpu().numpy().astype(np.complex64, copy=False),
        origin_px=geometry.origin_px,
        coverage=coverage.cpu().numpy().astype(np.float32, copy=False),
        positions_px=scan.positions_px[used],
        metadata={
            "N": m.N,
            "gridsize": m.gridsize,
            "n_groups": len(groups),
            "n_patterns": int(len(used)),
            "n_patches": n_patterns,  # predicted: groups x patterns per group
            "stitch_weights": weights,
            "phases": chosen,
            "phase_nll": nll or None,
            "precision": precision,
            "output_variation": variation,
            "collapsed": collapsed,
            "chunk_patterns": chunk_patterns,
            "n_chunks": n_chunks,
            "elapsed_s": elapsed,
            "network_s": predict_s,
            "source": scan.source,
            "bundle_created": bundle.manifest.get("created"),
        },
    )
