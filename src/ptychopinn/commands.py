"""Implementations of the ``ptychopinn`` commands (argument namespace -> work -> exit code)."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.outputs import check_output_file, output_set

logger = logging.getLogger("ptychopinn")

#: Output formats of ``simulate``, by file suffix.
SCAN_SUFFIXES = {".npz": "npz", ".h5": "h5", ".hdf5": "h5"}


# -- simulate ------------------------------------------------------------------------------
def _probe_file(path: str, keys: tuple[str, ...]) -> np.ndarray:
    """The probe an NPZ holds under the first of ``keys`` it has."""
    from ptychopinn.io.npz import load_npz_arrays

    arrays = load_npz_arrays(path)
    key = next((k for k in keys if k in arrays), None)
    if key is None:
        raise DataError(
            f"{path}: missing key {' or '.join(map(repr, keys))}; found {sorted(arrays)}"
        )
    return np.asarray(arrays[key])


def run_simulate(args: argparse.Namespace) -> int:
    from ptychopinn.data.simulate import simulate_scan, write_simulated_scan_h5
    from ptychopinn.io.npz import write_scan_npz

    out = Path(args.output)
    kind = check_output_file(out, SCAN_SUFFIXES, args.overwrite)
    probe = _probe_file(args.probe_file, ("probeGuess",)) if args.probe_file else None
    start = time.perf_counter()
    options: dict[str, Any] = {
        "n": args.N,
        "object_kind": args.object,
        "probe_kind": args.probe,
        "scan_kind": args.scan,
        "n_positions": args.n_positions or 512,
        "step_px": args.step_px,
        "photons_per_pattern": None if args.photons == 0 else args.photons,
        "seed": args.seed,
        "probe": probe,
        "jitter_px": args.jitter_px,
        "max_memory_gb": args.max_memory_gb,
    }
    if kind == "h5":  # chunked HDF5, written batch by batch
        info = write_simulated_scan_h5(out, **options)
        n_patterns, object_shape = info["n_patterns"], info["object_shape"]
    else:
        scan = simulate_scan(**options)
        write_scan_npz(out, scan)
        n_patterns, object_shape = scan.n_patterns, scan.object.shape  # type: ignore[union-attr]
    logger.info(
        "wrote %s: %d patterns of %dx%d, object %s, %.1f s",
        out, n_patterns, args.N, args.N, object_shape, time.perf_counter() - start,
    )  # fmt: skip
    return 0


# -- check ---------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> int:
    from ptychopinn.convert import describe
    from ptychopinn.io.summary import summarize
    from ptychopinn.workflows import check_diffraction_geometry, read_scan

    scan = read_scan(args.file, args.diffraction_units)
    geometry = check_diffraction_geometry(scan)  # scrambled data (not fftshifted): exit 2
    summary = {**summarize(scan, geometry), **describe(scan)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
    return 0


# -- convert -------------------------------------------------------------------------------
def run_convert(args: argparse.Namespace) -> int:
    from ptychopinn.convert import ConvertOptions, convert

    probe = None
    if args.probe_reader and not args.probe:
        raise ConfigError("--probe_reader reads the file given by --probe FILE")
    for flag in ("positions_file", "positions_reader"):
        if getattr(args, flag) and not args.reader:
            raise ConfigError(f"--{flag} goes with --reader NAME (a Ptychodus reader)")
    if args.probe_reader:
        from ptychopinn.io.beamline import read_probe

        probe = read_probe(args.probe, args.probe_reader)
    elif args.probe:
        probe = _probe_file(args.probe, ("probeGuess", "probe"))
        probe = probe.reshape(-1, *probe.shape[-2:]) if probe.ndim > 2 else probe[None]
    options = ConvertOptions(
        detector_crop=args.detector_crop,
        detector_bin=args.detector_bin,
        centre=args.centre,
        correct_centre=not args.no_centre_correction,
        probe=probe,
        positions=args.positions,
        photon_energy_eV=args.energy_eV,
        detector_distance_m=args.distance_m,
        detector_pixel_m=args.detector_pixel_m,
        pixel_size_m=args.pixel_size_m,
        units=args.diffraction_units,
        background=args.background,
        probe_modes=args.probe_modes,
        flip_positions=args.flip_positions,
        swap_positions=args.swap_positions,
        layout=args.layout,
        reader=args.reader,
        positions_file=args.positions_file,
        positions_reader=args.positions_reader,
    )
    convert(args.input, args.output, options, overwrite=args.overwrite)
    return 0


# -- train ---------------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> int:
    from ptychopinn.options import config_overrides, resolve_config
    from ptychopinn.training.trainer import is_rank_zero_process
    from ptychopinn.workflows import read_scan, train

    flags = config_overrides(args)
    if args.disable_mlflow:
        flags["training"]["logger"] = "none"
    units = args.diffraction_units
    if args.print_config:
        n = read_scan(args.train_data, units).N if args.train_data else None
        config, sources = resolve_config(args.preset, args.config, flags, n)
        print(json.dumps(config.to_dict(), indent=2))
        for key, origin in sorted(sources.items()):
            logger.info("%s: from %s", key, origin)
        return 0
    train_scan = read_scan(args.train_data, units)
    val_scan = read_scan(args.val_data, units) if args.val_data else None
    config, _ = resolve_config(args.preset, args.config, flags, train_scan.N)
    run = train(
        config,
        train_scan,
        args.output_dir,
        val_scan=val_scan,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if is_rank_zero_process():  # under DDP every rank returns here; one summary is enough
        logger.info("bundle: %s", run.bundle_path)
        logger.info(
            "final: %s",
            ", ".join(
                f"{k}={v:.4g}" for k, v in sorted(run.metrics.items()) if isinstance(v, float)
            ),
        )
    return 0


# -- infer ---------------------------------------------------------------------------------
INFER_OUTPUTS = (
    "reconstruction.npz",
    "reconstructed_amplitude.png",
    "reconstructed_phase.png",
    "product.h5",
    "metrics.json",
    "comparison.png",
    "network",
)


def run_infer(args: argparse.Namespace) -> int:
    from ptychopinn.device import inference_precision, torch_device
    from ptychopinn.workflows import load_bundle, read_scan

    out = Path(args.output_dir)
    export = _export_target(args)
    with output_set(out, INFER_OUTPUTS, args.overwrite) as work:
        device = torch_device(args.accelerator)
        precision = inference_precision(args.precision, device)
        bundle = load_bundle(args.model_path, map_location=device)
        bundle.check_compatible(N=args.N, gridsize=args.gridsize, source=str(args.model_path))
        scan = read_scan(args.data, args.diffraction_units)
        final = infer_into(work, bundle, scan, args, device, precision)
        if export is not None:
            _export_scan(export, scan, final)
    logger.info("wrote %s", out)
    return 0


def run_live(args: argparse.Namespace) -> int:
    from ptychopinn.device import inference_precision, torch_device
    from ptychopinn.inference import DEFAULT_BATCH
    from ptychopinn.live import LiveCanvas, LiveState, Spool, run_live, serve
    from ptychopinn.workflows import load_bundle

    out = Path(args.output_dir)
    if (args.watch is None) == (args.zmq is None):
        raise ConfigError("give one of --watch DIR (or FILE.h5) and --zmq ADDRESS")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who can reach this machine sees the page", args.host)
    infer_args = args.infer_args  # infer's options as infer takes them (set by the CLI)
    with output_set(out, INFER_OUTPUTS, args.overwrite) as work:
        device = torch_device(args.accelerator)
        precision = inference_precision("auto", device)
        bundle = load_bundle(args.model_path, map_location=device)
        batch = DEFAULT_BATCH.get(device.type, DEFAULT_BATCH["cuda"])
        canvas = LiveCanvas(bundle, device, precision, batch)
        canvas.warm_up()  # before the page says it is ready
        source = _live_source(args, bundle)
        state = LiveState(output_dir=str(out))
        try:
            server = serve(state, args.host, args.port)
        except OSError as exc:
            source.close()
            raise ConfigError(f"--port {args.port}: cannot serve on {args.host} ({exc})") from exc
        host, port = server.server_address[:2]
        logger.info("live view at http://%s:%d/ ; %s", host, port, source.describe())
        # the arrived patterns wait on disk next to the outputs, not in memory
        spool_dir = tempfile.TemporaryDirectory(prefix=f".{out.name}.live-", dir=out.parent)
        spool = Spool(Path(spool_dir.name))
        try:
            run_live(
                canvas, source, state, spool, args.expect, args.poll_s,
                not args.no_live_refinement,
            )  # fmt: skip
            source.close()
            infer_into(work, bundle, spool.finished_scan(), infer_args, device, precision)
        except BaseException:
            server.shutdown()
            raise
        finally:
            source.close()
            spool.close()
            spool_dir.cleanup()
    logger.info("wrote %s", out)
    with state.lock:
        state.done = True
    time.sleep(args.linger_s)  # the page shows "done" and where the outputs went
    server.shutdown()
    return 0


def _live_source(args: argparse.Namespace, bundle: Any) -> Any:
    """``live``'s source: a directory, a growing HDF5 file, or a ZMQ stream."""
    from ptychopinn.streams import Directory, GrowingFile, ZmqStream
    from ptychopinn.workflows import read_scan

    if args.zmq is not None:
        probe = bundle.probe.detach().cpu().numpy().astype(np.complex64)
        power = float(np.sum(np.abs(probe) ** 2))  # the training scan's scale
        probe = probe * np.sqrt(bundle.normalization.probe_power / max(power, 1e-30))
        return ZmqStream(args.zmq, probe, bind=args.zmq_bind)
    watch = Path(args.watch)
    if watch.is_dir():
        return Directory(watch, lambda p: read_scan(p, args.diffraction_units))
    if watch.suffix in (".h5", ".hdf5"):
        return GrowingFile(watch, args.diffraction_units)
    raise ConfigError(
        f"{watch}: --watch needs an existing directory or a growing HDF5 scan (.h5, .hdf5)"
    )


def infer_into(
    work: Path, bundle: Any, scan: Any, args: argparse.Namespace, device: Any, precision: Any
) -> Any:
    """``infer``'s reconstruction of ``scan`` with the options in ``args``, written to ``work``
    (also what ``live`` writes when its scan ends); returns the final reconstruction."""
    from ptychopinn.transfer import warn_if_outside
    from ptychopinn.workflows import (
        adapted_network,
        corrected_if_poor,
        refine_options,
        refine_reconstruction,
    )

    warn_if_outside(bundle, scan)
    bundle, network, adapted = adapted_network(
        bundle, scan, getattr(args, "adapt", 0), args.refine, device,
        n_groups=args.n_groups, batch_size=args.batch_size, weights=args.stitch_weights,
        synchronize=args.phase_sync, precision=precision, max_memory_gb=args.max_memory_gb,
    )  # fmt: skip
    final = network
    if args.refine != 0:
        start = None if args.refine_from == "flat" else network
        options = refine_options(
            bundle, start, args.refine, args.refine_probe, args.max_memory_gb,
            args.refine_positions,
        )  # fmt: skip
        final = refine_reconstruction(
            bundle, scan, start, args.refine, args.refine_probe, device, options
        )
        if args.refine == "auto" and not args.refine_probe and not args.refine_positions:
            final = corrected_if_poor(bundle, scan, start, final, device, args.max_memory_gb)
    final = _with_data_fit(bundle, scan, final, device, args)
    if adapted is not None:
        final = final.replace(metadata={**final.metadata, "adapt": adapted})
    if args.pixel_size_m is not None:
        final = final.replace(pixel_size_m=args.pixel_size_m)
        network = network.replace(pixel_size_m=args.pixel_size_m)
    # the network alone is written beside the final result whenever refinement ran
    _write_reconstructions(work, scan, final, network if args.refine != 0 else None)
    return final


def _with_data_fit(bundle: Any, scan: Any, rec: Any, device: Any, args: Any) -> Any:
    """The reconstruction with its data fit in the metadata (logged; a poor one with advice)."""
    import torch

    from ptychopinn.fit import data_fit, report

    probe = bundle.probe if rec.probe is None else torch.from_numpy(rec.probe)
    fit = data_fit(scan, rec, probe, bundle.normalization.for_scan(scan), device)
    used = {flag for flag, on in (("--refine_probe", args.refine_probe),
                                  ("--refine_positions", args.refine_positions)) if on}  # fmt: skip
    report(fit, used)
    if fit is None:
        return rec
    values = {"r_factor": fit.r_factor, "noise_floor": fit.noise_floor, "patterns": fit.patterns}
    return rec.replace(metadata={**rec.metadata, "data_fit": values})


def _export_target(args: argparse.Namespace) -> tuple[Path, str] | None:
    """``--export_scan``: its path and format, checked before any work."""
    if args.export_scan is None:
        return None
    if not args.refine_positions:
        raise ConfigError("--export_scan writes corrected positions: add --refine_positions")
    path = Path(args.export_scan)
    return path, check_output_file(path, SCAN_SUFFIXES, args.overwrite)


def _export_scan(target: tuple[Path, str], scan: Any, rec: Any) -> None:
    from ptychopinn.io.hdf5 import write_scan_h5
    from ptychopinn.io.npz import write_scan_npz
    from ptychopinn.workflows import scan_with_positions

    path, kind = target
    corrected = scan_with_positions(scan, rec)
    (write_scan_h5 if kind == "h5" else write_scan_npz)(path, corrected)
    moved = rec.refinement is not None and rec.refinement.positions_refined
    logger.info("wrote %s: the scan with %s positions", path, "corrected" if moved else "its given")


def _write_reconstructions(out: Path, scan: Any, final: Any, network: Any | None) -> None:
    """The final reconstruction in ``out``, the network alone in ``out/network`` (if refined),
    a Ptychodus product for a Ptychodus input, and metrics against a reference object."""
    from ptychopinn.workflows import write_metrics

    final.save(out)
    if network is not None:
        network.save(out / "network")
    if "ptychodus" in scan.metadata:  # a Ptychodus input gets a Ptychodus product back
        from ptychopinn.io.ptychodus_files import write_product

        write_product(out / "product.h5", final, scan.metadata["ptychodus"]["product"], scan=scan)
    if scan.object is None:
        return
    network_metrics = None
    if network is not None:
        network_metrics = write_metrics(network, scan.object, out / "network")
        logger.info("network alone vs objectGuess: %s", headline(network_metrics))
    metrics = write_metrics(final, scan.object, out, network_metrics=network_metrics)
    logger.info("%s vs objectGuess: %s", _label(final), headline(metrics))


def _label(rec: Any) -> str:
    r = rec.refinement
    if r is None:
        return "network alone"
    return f"refined ({r.passes} passes, {r.requested})"


def headline(metrics: dict[str, Any]) -> str:
    keys = ("phase_ssim", "amplitude_ssim", "phase_mae", "frc50_rings")
    return ", ".join(
        f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))
    )


# -- evaluate ------------------------------------------------------------------------------
def run_evaluate(args: argparse.Namespace) -> int:
    from ptychopinn.io.npz import load_npz_arrays
    from ptychopinn.reconstruction import Reconstruction
    from ptychopinn.workflows import write_metrics

    with output_set(Path(args.output_dir), EVALUATE_OUTPUTS, args.overwrite) as work:
        ref_arrays = load_npz_arrays(args.reference)
        if "objectGuess" not in ref_arrays:
            raise DataError(f"{args.reference}: missing key 'objectGuess' (the reference object)")
        reference = np.asarray(ref_arrays["objectGuess"])
        if reference.ndim != 2 or not np.all(np.isfinite(reference)):
            raise DataError(
                f"{args.reference}: objectGuess: expected a finite 2-D array, got "
                f"{reference.dtype} {reference.shape}"
            )
        if not np.any(reference):
            raise DataError(f"{args.reference}: objectGuess is all zero: nothing to compare with")
        rec_arrays = load_npz_arrays(args.reconstruction)
        if "object" in rec_arrays:
            rec = Reconstruction.load(args.reconstruction)
        elif "objectGuess" in rec_arrays:
            rec = _object_guess_reconstruction(args.reconstruction, rec_arrays)
        else:
            raise DataError(
                f"{args.reconstruction}: expected key 'object' (reconstruction.npz) or "
                f"'objectGuess'; found {sorted(rec_arrays)}"
            )
        metrics = write_metrics(rec, reference, work, args.pixel_size_m)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    return 0


EVALUATE_OUTPUTS = ("metrics.json", "comparison.png")


def _object_guess_reconstruction(path: str, arrays: dict[str, Any]) -> Any:
    """An iterative solver's NPZ (objectGuess, probeGuess, positions) as a Reconstruction."""
    from ptychopinn.reconstruction import Reconstruction

    obj = np.asarray(arrays["objectGuess"])
    if obj.ndim != 2:
        raise DataError(f"{path}: objectGuess: expected a 2-D array, got {obj.shape}")
    n = int(np.asarray(arrays["probeGuess"]).shape[-1]) if "probeGuess" in arrays else 0
    if "xcoords" in arrays and "ycoords" in arrays and n:
        positions = np.stack([arrays["ycoords"], arrays["xcoords"]], axis=1).astype(np.float64)
    else:
        positions = np.array([[obj.shape[0] / 2, obj.shape[1] / 2]])
        n = min(obj.shape) * 2
    return Reconstruction(
        object=obj.astype(np.complex64),
        origin_px=(0, 0),
        coverage=np.ones(obj.shape, np.float32),
        positions_px=positions,
        N=n,
    )


# -- demo ----------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    from ptychopinn.demo import run_demo as demo

    metrics = demo(
        Path(args.output_dir),
        max_epochs=args.max_epochs,
        max_time=args.max_time,
        seed=args.seed,
        overwrite=args.overwrite,
        accelerator=args.accelerator,
    )
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    return 0
