"""High-level Python API: ``train``, ``load_bundle``, ``reconstruct``, ``evaluate_reconstruction``.

Usable from a notebook without the CLI::

    from ptychopinn import workflows as pp
    scan = pp.read_scan("scan.npz")
    run = pp.train(pp.Config(), scan, "runs/a")
    bundle = pp.load_bundle(run.bundle_path)
    rec = pp.reconstruct(bundle, scan)

and, for a new scan, ``bundle, _ = pp.adapt(bundle, new_scan, seconds=20)`` first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychopinn.bundle import Bundle, load_bundle
from ptychopinn.config import Config
from ptychopinn.data.dataset import Normalization
from ptychopinn.errors import ConfigError
from ptychopinn.inference import reconstruct as network_reconstruction
from ptychopinn.io.npz import read_npz
from ptychopinn.io.paths import check_regular_file
from ptychopinn.io.scan import ScanData
from ptychopinn.reconstruction import Reconstruction
from ptychopinn.training.run import TrainingRun, check_diffraction_geometry, train
from ptychopinn.transfer import adapt

logger = logging.getLogger(__name__)

__all__ = [
    "Config",
    "TrainingRun",
    "adapt",
    "evaluate_reconstruction",
    "load_bundle",
    "read_scan",
    "reconstruct",
    "refine_reconstruction",
    "train",
]


def read_scan(path: str | os.PathLike[str], units: str = "auto") -> ScanData:
    """Read a scan from an NPZ, a chunked HDF5 scan, a CXI file, or a Ptychodus pair.

    An ``.h5`` / ``.hdf5`` file with the root attribute ``format = "ptychopinn-scan"`` is a
    chunked HDF5 scan (:mod:`ptychopinn.io.hdf5`), whose patterns stream from disk. Any other
    HDF5 file, or a directory holding ``product.h5``, is a Ptychodus scan named by its
    ``product.h5``, its ``diffraction.h5`` or the directory; its patterns are photon counts
    whatever their dtype. A ``.cxi`` file, or HDF5 with ``/entry_1/data_1/data``, is read as
    CXI (:mod:`ptychopinn.io.cxi`); an NPZ with ``data``, ``scan`` and ``probe`` as the tike /
    pty-chi layout (:mod:`ptychopinn.io.tike`). An NPZ saved without compression has its
    patterns memory-mapped.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():  # a FIFO or a device is refused before it is opened
        check_regular_file(p, "a scan file")
    if p.suffix in (".h5", ".hdf5") and p.is_file():
        from ptychopinn.io.hdf5 import is_scan_h5, read_scan_h5

        if is_scan_h5(p):
            return read_scan_h5(p, units)  # type: ignore[arg-type]
    from ptychopinn.io.cxi import is_cxi, read_cxi

    if is_cxi(p):
        return read_cxi(p, units)
    if p.suffix in (".h5", ".hdf5") or (p.is_dir() and (p / "product.h5").is_file()):
        from ptychopinn.io.ptychodus_files import read_scan as read_ptychodus_scan

        if units == "amplitude":
            raise ConfigError(
                f"{p}: Ptychodus diffraction patterns are photon counts; "
                "--diffraction-units amplitude does not apply"
            )
        return read_ptychodus_scan(p)
    return read_npz(p, units)  # type: ignore[arg-type]


def reconstruct(
    bundle: Bundle,
    scan: ScanData,
    refine: int | str = "auto",
    refine_probe: bool = False,
    refine_from: str = "network",
    device: torch.device | str = "cpu",
    refine_positions: str | None = None,
    adapt: float | str = "auto",
    **network_options: Any,
) -> Reconstruction:
    """The best estimate of the object: the network's reconstruction, refined.

    ``adapt``: seconds of fine-tuning the network on ``scan`` first (:func:`adapt`), 0 never,
    or ``"auto"``: when the network explains the scan much worse than its training data (a new
    kind of sample) and refinement follows (:func:`~ptychopinn.transfer.adapted_if_new`).

    ``refine="auto"`` (the default) refines until held-out patterns stop becoming more
    likely and never returns something worse than the network alone by that measure;
    ``refine=0`` returns the network alone; ``refine=N`` runs exactly N passes.
    ``refine_from="flat"`` refines from a flat object instead. ``refine_positions``
    (``"free"`` or ``"affine"``) corrects the scan positions too (the result's
    ``positions_px``; :func:`scan_with_positions` makes a scan of them). ``network_options`` go to
    :func:`ptychopinn.inference.reconstruct` (``n_groups``, ``batch_size``, ``weights``,
    ``synchronize``, ``precision``, ``chunk_patterns``).
    """
    bundle, network, record = adapted_network(
        bundle, scan, adapt, refine, device, **network_options
    )
    if refine == 0:
        return network
    start = None if refine_from == "flat" else network
    budget = network_options.get("max_memory_gb")
    options = refine_options(bundle, start, refine, refine_probe, budget, refine_positions)
    rec = refine_reconstruction(bundle, scan, start, refine, refine_probe, device, options)
    if refine == "auto" and not refine_probe and not refine_positions:
        rec = corrected_if_poor(bundle, scan, start, rec, device, budget)
    return rec if record is None else rec.replace(metadata={**rec.metadata, "adapt": record})


def adapted_network(
    bundle: Bundle,
    scan: ScanData,
    adapt: float | str = "auto",
    refine: int | str = "auto",
    device: torch.device | str = "cpu",
    **network_options: Any,
) -> tuple[Bundle, Reconstruction, dict[str, Any] | None]:
    """The model to use on ``scan`` (adapted to it or not, see :func:`reconstruct`), its
    network reconstruction, and the adaptation's record (None when it did not adapt). With
    ``refine=0`` (the network alone) ``"auto"`` does not adapt."""
    from ptychopinn import transfer

    record = None
    if adapt != "auto" and adapt:
        bundle, record = transfer.adapt(bundle, scan, seconds=float(adapt), device=device)
    network = network_reconstruction(bundle, scan, device=device, **network_options)
    if adapt == "auto" and refine != 0:
        bundle, record = transfer.adapted_if_new(bundle, scan, network, device)
        if record is not None:
            network = network_reconstruction(bundle, scan, device=device, **network_options)
    if record is not None:
        network = network.replace(metadata={**network.metadata, "adapt": record})
    return bundle, network, record


def corrected_if_poor(
    bundle: Bundle,
    scan: ScanData,
    start: Reconstruction | None,
    rec: Reconstruction,
    device: torch.device | str = "cpu",
    max_memory_gb: float | None = None,
) -> Reconstruction:
    """``rec``, or, where it explains the patterns worse than their noise allows (a probe
    from another defocus, positions off by a pixel: :mod:`ptychopinn.fit`), the ``auto``
    refinement from ``start`` with the probe and the positions corrected too, if that
    explains them better (the probe alone first). What happened goes into the metadata
    (``corrections``)."""
    from ptychopinn.fit import GOOD_FIT_RATIO, data_fit

    normalization = bundle.normalization.for_scan(scan)
    probe = bundle.probe if rec.probe is None else torch.from_numpy(rec.probe)
    fit = data_fit(scan, rec, probe, normalization, device)
    if fit is None or not fit.poor:
        return rec
    record: dict[str, Any] = {"r_factor_before": fit.r_factor, "noise_floor": fit.noise_floor}
    best, best_r = rec, fit.r_factor
    # the probe first (positions that are right lose a little when they are set free), then
    # the probe and the positions, until the fit is within 1.2 times its floor
    for positions in (None, "free"):
        what = "the probe" + (" and the positions" if positions else "")
        logger.info(
            "data fit %.4f is %.1f times its noise floor %.4f: refining %s as well",
            best_r, best_r / max(fit.noise_floor, 1e-12), fit.noise_floor, what,
        )  # fmt: skip
        options = refine_options(bundle, start, "auto", True, max_memory_gb, positions)
        candidate = refine_reconstruction(bundle, scan, start, "auto", True, device, options)
        assert candidate.probe is not None
        new = data_fit(scan, candidate, torch.from_numpy(candidate.probe), normalization, device)
        if new is not None and new.r_factor < best_r:
            best, best_r = candidate, new.r_factor
            record.update(r_factor_after=new.r_factor, probe=True, positions=positions)
            if new.ratio <= GOOD_FIT_RATIO:
                break
    if best is rec:
        logger.info("the corrections did not explain the patterns better: kept without them")
    record["kept"] = best is not rec
    return best.replace(metadata={**best.metadata, "corrections": record})


def refine_reconstruction(
    bundle: Bundle,
    scan: ScanData,
    start: Reconstruction | None,
    passes: int | str = "auto",
    refine_probe: bool = False,
    device: torch.device | str = "cpu",
    options: Any = None,
) -> Reconstruction:
    """Maximum-likelihood refinement with the bundle's forward model (:mod:`ptychopinn.refinement`).

    ``start`` is the network's reconstruction (or None for a flat object); ``passes`` is
    ``"auto"`` (:func:`~ptychopinn.refine_auto.refine_auto`) or a number of passes. A start
    from a collapsed network (a tiled constant patch) is a worse start than a flat object, so
    refinement then starts flat, with a warning. ``options`` replaces the settings chosen
    for the start (:func:`refine_options`).
    """
    from ptychopinn.refine_auto import refine_auto
    from ptychopinn.refinement import refine

    if passes != "auto" and (not isinstance(passes, int) or passes < 0):
        raise ConfigError(f"refine: expected 'auto' or a number of passes >= 0, got {passes!r}")
    network = start
    if start is not None and start.collapsed:
        logger.warning("the network's reconstruction is collapsed: refining from a flat object")
        start = None
    opts = options or refine_options(bundle, start, passes, refine_probe)
    normalization = bundle.normalization.for_scan(scan)
    if passes != "auto":
        return refine(scan, bundle.probe, normalization, start, opts, device)[0]
    rec = refine_auto(scan, bundle.probe, normalization, start, opts, device)[0]
    if rec.refinement is not None and rec.refinement.passes == 0 and network is not None:
        return network.replace(refinement=rec.refinement)  # nothing better than the network's
    return rec


#: Most passes ``refine="auto"`` runs (its step sizes anneal over these).
AUTO_MAX_PASSES = 100


def refine_options(
    bundle: Bundle,
    start: Reconstruction | None,
    passes: int | str,
    refine_probe: bool,
    max_memory_gb: float | None = None,
    refine_positions: str | None = None,
) -> Any:
    """Refinement settings for a start.

    A network trained with the overlap constraint (or on channels of neighbours) predicts
    the large-scale phase too: refinement keeps it and takes small steps (0.02, reached over
    the first 5 passes, without the coarse correction field), which improve such a start
    without first shaking it. A network that saw one pattern at a time
    cannot know its patches' constant phases: refinement discards the start's large-scale
    phase and takes bold steps (0.1) with the coarse correction field, as from a flat start.
    ``auto`` anneals its steps from the first pass, so its held-out likelihood improves
    steadily until the data stop supporting more. ``refine_positions`` (``free`` or
    ``affine``) moves the positions by steps of 0.1 px from the fifth pass on, each by at
    most 3 px per axis (:mod:`ptychopinn.positions`). ``refine_probe`` refines the probe by
    steps of 0.1 (0.01 recovered too little of a probe from another defocus in 150 passes).
    """
    from ptychopinn.refinement import RefineOptions

    n_iter = AUTO_MAX_PASSES if passes == "auto" else int(passes)
    m = bundle.config.model
    trusted = start is not None and (m.K > 1 or m.C > 1)
    return RefineOptions(
        n_iter=n_iter,
        coarse_factor=0 if trusted else 16,
        object_lr=0.02 if trusted else 0.1,
        start_phase_sigma_px=0.0 if trusted else None,
        anneal_start=0.0 if passes == "auto" else 0.5,
        warmup_passes=5.0 if trusted else 0.0,
        probe_lr=0.1 if refine_probe else 0.0,
        max_memory_gb=max_memory_gb,
        position_lr=0.1 if refine_positions else 0.0,
        position_constraint=refine_positions or "free",  # type: ignore[arg-type]  # checked there
    )


def scan_with_positions(scan: ScanData, rec: Reconstruction) -> ScanData:
    """``scan`` with the positions of ``rec`` (e.g. corrected by ``refine_positions``).

    The reconstruction's positions are the scan's, pattern by pattern, in the scan's frame
    (y, x object pixels), so the result trains and reconstructs like any scan; the given
    positions become its nominal ones (unless it has them already).
    :func:`ptychopinn.io.npz.write_scan_npz` writes it (``infer --export_scan``).
    """
    from dataclasses import replace

    if rec.positions_px.shape != scan.positions_px.shape:
        raise ConfigError(
            f"scan_with_positions: {len(rec.positions_px)} positions for {scan.n_patterns} patterns"
        )
    nominal = scan.positions_px if scan.nominal_positions_px is None else scan.nominal_positions_px
    return replace(
        scan,
        positions_px=np.asarray(rec.positions_px, dtype=np.float64),
        nominal_positions_px=nominal,
    )


def write_metrics(
    rec: Reconstruction,
    reference: np.ndarray,
    out: Path,
    pixel_size_m: float | None = None,
    network_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``rec`` against ``reference``; write metrics.json and comparison.png into ``out``."""
    from dataclasses import asdict

    from ptychopinn.evaluation import write_comparison_figure
    from ptychopinn.io.npz import write_json

    result = evaluate_reconstruction(rec, reference, pixel_size_m or rec.pixel_size_m)
    metrics = result.metrics.to_dict()
    if rec.refinement is not None:
        metrics["refinement"] = asdict(rec.refinement)
    if network_metrics is not None:
        metrics["network_only"] = network_metrics
    write_json(Path(out) / "metrics.json", metrics)
    write_comparison_figure(
        Path(out) / "comparison.png",
        result.aligned_reconstruction,
        result.aligned_reference,
        result.metrics,
    )
    return metrics


def evaluate_reconstruction(
    reconstruction: Reconstruction,
    reference: np.ndarray,
    pixel_size_m: float | None = None,
) -> Any:
    """Compare a reconstruction with a reference object on the same object grid.

    The comparison is restricted to the well-reconstructed region (central
    support of every patch), with registration, global phase and ramp removed.
    """
    from ptychopinn.evaluation import compare, scanned_region

    rec_full = reconstruction.on_object_grid(reference.shape)
    box = scanned_region(reconstruction.positions_px, reconstruction.N, reference.shape)
    return compare(rec_full, reference, crop_box=box, pixel_size_m=pixel_size_m)


__all__ += [
    "Bundle",
    "Normalization",
    "Reconstruction",
    "check_diffraction_geometry",
    "network_reconstruction",
    "write_metrics",
]
