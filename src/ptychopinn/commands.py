"""Implementations of the ``ptychopinn`` commands (argument namespace -> work -> exit code)."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.config import Config, ModelConfig, TrainingConfig, section_from_dict
from ptychopinn.errors import ConfigError, DataError

logger = logging.getLogger("ptychopinn")


# -- simulate ------------------------------------------------------------------------------
def run_simulate(args: argparse.Namespace) -> int:
    from ptychopinn.cli import refuse_existing
    from ptychopinn.data.simulate import simulate_scan, write_simulated_scan_h5
    from ptychopinn.io.npz import write_scan_npz

    out = Path(args.output)
    refuse_existing(out.parent, [out.name], args.overwrite)
    probe = None
    if args.probe_file:
        from ptychopinn.io.npz import load_npz_arrays

        arrays = load_npz_arrays(args.probe_file)
        if "probeGuess" not in arrays:
            raise DataError(f"{args.probe_file}: missing key 'probeGuess'; found {sorted(arrays)}")
        probe = np.asarray(arrays["probeGuess"])
    start = time.perf_counter()
    options: dict[str, Any] = {
        "n": args.N,
        "object_kind": args.object,
        "probe_kind": args.probe,
        "scan_kind": args.scan,
        "n_positions": args.n_images,
        "step_px": args.step_px,
        "photons_per_pattern": None if args.photons == 0 else args.photons,
        "seed": args.seed,
        "probe": probe,
        "jitter_px": args.jitter_px,
    }
    if out.suffix in (".h5", ".hdf5"):  # chunked HDF5, written batch by batch
        info = write_simulated_scan_h5(out, **options)
        n_patterns, object_shape = info["n_patterns"], info["object_shape"]
    else:
        scan = simulate_scan(**options)
        write_scan_npz(out, scan)
        n_patterns, object_shape = scan.n_patterns, scan.object.shape  # type: ignore[union-attr]
    logger.info(
        "wrote %s: %d patterns of %dx%d, object %s, %.1f s",
        out,
        n_patterns,
        args.N,
        args.N,
        object_shape,
        time.perf_counter() - start,
    )
    return 0


# -- check ---------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> int:
    from ptychopinn.io.summary import summarize
    from ptychopinn.workflows import read_scan

    scan = read_scan(args.file, args.diffraction_units)
    summary = summarize(scan)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            print(f"{key:<{width}}  {value}")
    return 0


# -- train ---------------------------------------------------------------------------------
_MODEL_FLAGS = (
    "gridsize",
    "group_stride",
    "n_filters_scale",
    "stem_stride",
    "architecture",
    "per_pattern",
    "merge_weights",
    "norm_layer",
    "amp_activation",
    "probe_big",
    "probe_mask",
    "mode",
)
_TRAINING_FLAGS = (
    "max_epochs",
    "batch_size",
    "learning_rate",
    "scheduler",
    "warmup_fraction",
    "adam_beta2",
    "loss",
    "nphotons",
    "n_groups",
    "seed",
    "val_fraction",
    "early_stopping_patience",
    "accelerator",
    "num_nodes",
    "strategy",
    "precision",
    "deterministic",
    "num_workers",
    "logger",
    "mlflow_tracking_uri",
    "diffraction_units",
)


#: Network used on a CPU when neither the flags nor the JSON config choose the architecture or
#: the size: the physics-informed U-Net (measured amplitudes propagated back to the sample
#: through the known probe, then a real-space U-Net at N/2; 0.085 GFLOP per pattern at N = 64).
#: On the six cases of benchmarks/quality.py (30 epochs, one CPU thread) it trains in about half
#: the time of the cheap CNN (half the filters, stride-2 stem, 0.21 GFLOP), gives a better
#: amplitude on all six and a better phase on four, and with it 100 refinement passes reach
#: phase SSIM >= 0.95 on every object class at 1e6 photons (README, issue notes).
CPU_PRESET: dict[str, Any] = {
    "architecture": "backprop_unet",
    "n_filters_scale": 1.0,
    "stem_stride": 2,
}


#: ``--preset overlap``: overlap-constrained training of the CPU network. Each pattern's patch
#: comes from the single-pattern U-Net, but the nine patches of a group two scan steps apart are
#: merged into one object before the likelihood, each weighted by the probe amplitude, so every
#: prediction must agree with its neighbours' where they see the object best. LayerNorm over the
#: channels of each pixel, a warmup over the first 6 % of the steps to 1e-3, then a cosine to
#: zero, and Adam's beta2 = 0.99. On the quality benchmark's 576-pattern scans (README,
#: "Overlap-constrained training over the whole scan") 20 epochs give the network alone phase
#: SSIM >= 0.8 on all three object classes (the natural image 0.81, lines and GRF above 0.95).
#: Values given by flags or the JSON config win; the precision is bf16-mixed where the device
#: computes in bfloat16 natively (same quality, 1.5-1.7x faster on such CPUs).
OVERLAP_PRESET: dict[str, dict[str, Any]] = {
    "model": {
        "gridsize": 3,
        "per_pattern": True,
        "group_stride": 2,
        "norm_layer": "layer",
        "merge_weights": "probe",
        **CPU_PRESET,
    },
    "training": {
        "max_epochs": 20,
        "batch_size": 2,
        "learning_rate": 1e-3,
        "scheduler": "cosine",
        "warmup_fraction": 0.06,
        "adam_beta2": 0.99,
    },
}

#: ``--preset`` name -> the config values it sets (the CLI lists the same names).
TRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {"overlap": OVERLAP_PRESET}


def native_bf16(accelerator: str) -> bool:
    """Whether ``accelerator`` computes in bfloat16 natively (bf16-mixed is then faster).

    A CPU needs AVX512-BF16 or AMX (oneDNN emulates bfloat16 otherwise, slower than float32);
    a CUDA GPU needs compute capability 8 or newer.
    """
    import torch

    if _runs_on_cpu(accelerator):
        cpu = torch.cpu
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private in torch 2.x
        return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)
    return bool(
        torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    )


def _runs_on_cpu(accelerator: str) -> bool:
    import torch

    if accelerator == "cpu":
        return True
    if accelerator in ("gpu", "cuda", "auto"):
        return not torch.cuda.is_available()
    return False


def config_from_args(args: argparse.Namespace, n: int) -> Config:
    """Config from an optional JSON file, overridden by the flags given, N from the data."""
    base: dict[str, Any] = {"model": {}, "training": {}}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{args.config}: cannot read JSON config ({exc})") from exc
    preset = TRAIN_PRESETS.get(getattr(args, "preset", None) or "", {})
    model = {**preset.get("model", {}), **base.get("model", {})}
    training = {**preset.get("training", {}), **base.get("training", {})}
    if "N" in model and model["N"] != n:
        raise ConfigError(
            f"{args.config}: model.N = {model['N']} but the data have {n}x{n} patterns"
        )
    model["N"] = n
    for name in _MODEL_FLAGS:
        if getattr(args, name, None) is not None:
            model[name] = getattr(args, name)
    for name in _TRAINING_FLAGS:
        value = getattr(args, name, None)
        if value is not None and not (
            name == "diffraction_units" and value == "auto" and name in training
        ):
            training[name] = value
    if args.devices is not None:
        training["devices"] = int(args.devices) if str(args.devices).isdigit() else args.devices
    if args.disable_mlflow:
        training["logger"] = "none"
    training.setdefault("accelerator", "cpu")
    if preset and "precision" not in training and native_bf16(training["accelerator"]):
        training["precision"] = "bf16-mixed"
    if not CPU_PRESET.keys() & model.keys() and _runs_on_cpu(str(training["accelerator"])):
        model.update(CPU_PRESET)
        logger.info(
            "CPU: using the physics-informed U-Net (--architecture backprop_unet "
            "--n_filters_scale 1 --stem_stride 2: trains in minutes); --architecture ptychopinn "
            "--n_filters_scale 2 --stem_stride 1 gives the upstream network"
        )
    return Config(
        model=section_from_dict(ModelConfig, model),
        training=section_from_dict(TrainingConfig, training),
    )


def run_train(args: argparse.Namespace) -> int:
    from ptychopinn.workflows import is_rank_zero_process, read_scan, train

    units = args.diffraction_units
    train_scan = read_scan(args.train_data_file, units)
    val_scan = read_scan(args.test_data_file, units) if args.test_data_file else None
    config = config_from_args(args, train_scan.N)
    logger.info(
        "training N=%d gridsize=%d on %d patterns (%s), %d epochs, batch %d, %s",
        config.model.N,
        config.model.gridsize,
        train_scan.n_patterns,
        train_scan.source,
        config.training.max_epochs,
        config.training.batch_size,
        config.training.accelerator,
    )
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
    "product.h5",
    "reconstructed_amplitude.png",
    "reconstructed_phase.png",
    "metrics.json",
)


def run_infer(args: argparse.Namespace) -> int:
    import torch

    from ptychopinn.cli import refuse_existing
    from ptychopinn.workflows import load_bundle, read_scan, reconstruct, resolve_accelerator

    out = Path(args.output_dir)
    refuse_existing(out, INFER_OUTPUTS, args.overwrite)
    accelerator = resolve_accelerator(args.accelerator or "cpu")
    device = "cuda" if accelerator in ("gpu", "auto") and torch.cuda.is_available() else "cpu"
    bundle = load_bundle(args.model_path, map_location=device)
    bundle.check_compatible(N=args.N, gridsize=args.gridsize, source=str(args.model_path))
    scan = read_scan(args.test_data, args.diffraction_units)
    rec = reconstruct(
        bundle,
        scan,
        n_groups=args.n_groups,
        batch_size=args.batch_size,
        device=device,
        weights=args.stitch_weights,
        synchronize=args.phase_sync,
        precision=args.precision,
    )
    network_metrics = None
    if args.refine < 0:
        raise ConfigError(f"--refine: expected a number of passes >= 0, got {args.refine}")
    if args.refine:
        from ptychopinn.workflows import evaluate_reconstruction, refine_reconstruction

        if scan.object is not None:
            network = evaluate_reconstruction(rec, scan.object, args.pixel_size_m).metrics
            network_metrics = network.to_dict()
            logger.info("network alone vs objectGuess: %s", _headline(network_metrics))
        start = None if args.refine_from == "flat" else rec
        rec = refine_reconstruction(
            bundle, scan, start, passes=args.refine, refine_probe=args.refine_probe, device=device
        )
    for path in rec.save(out):
        logger.info("wrote %s", path)
    if "ptychodus" in scan.metadata:  # a Ptychodus input gets a Ptychodus product back
        from ptychopinn.io.ptychodus_files import write_product

        write_product(out / "product.h5", rec, scan.metadata["ptychodus"]["product"], scan=scan)
    if scan.object is not None:
        metrics = write_metrics(rec, scan.object, out, args.pixel_size_m, network_metrics)
        logger.info("vs objectGuess: %s", _headline(metrics))
    return 0


def write_metrics(
    rec: Any,
    reference: np.ndarray,
    out: Path,
    pixel_size_m: float | None,
    network_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``rec`` against ``reference``; write metrics.json and comparison.png into ``out``."""
    from ptychopinn.evaluation import write_comparison_figure
    from ptychopinn.io.npz import write_json
    from ptychopinn.workflows import evaluate_reconstruction

    result = evaluate_reconstruction(rec, reference, pixel_size_m)
    metrics = result.metrics.to_dict()
    for key in ("refine_passes", "refine_s", "refine_start"):
        if key in rec.metadata:
            metrics[key] = rec.metadata[key]
    if network_metrics is not None:
        metrics["network_only"] = network_metrics
    write_json(out / "metrics.json", metrics)
    write_comparison_figure(
        out / "comparison.png",
        result.aligned_reconstruction,
        result.aligned_reference,
        result.metrics,
    )
    return metrics


def _headline(metrics: dict[str, Any]) -> str:
    keys = ("phase_ssim", "amplitude_ssim", "phase_mae", "frc50_rings")
    return ", ".join(
        f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), (int, float))
    )


# -- evaluate ------------------------------------------------------------------------------
def run_evaluate(args: argparse.Namespace) -> int:
    from ptychopinn.cli import refuse_existing
    from ptychopinn.inference import Reconstruction
    from ptychopinn.io.npz import load_npz_arrays

    out = Path(args.output_dir)
    refuse_existing(out, ["metrics.json", "comparison.png"], args.overwrite)
    ref_arrays = load_npz_arrays(args.reference)
    if "objectGuess" not in ref_arrays:
        raise DataError(f"{args.reference}: missing key 'objectGuess' (the reference object)")
    reference = ref_arrays["objectGuess"]
    rec_arrays = load_npz_arrays(args.reconstruction)
    if "object" in rec_arrays:
        for key in ("origin_px", "coverage", "positions_px"):
            if key not in rec_arrays:
                raise DataError(
                    f"{args.reconstruction}: missing key '{key}' of a reconstruction.npz"
                )
        meta = json.loads(str(rec_arrays["metadata"])) if "metadata" in rec_arrays else {}
        rec = Reconstruction(
            object=rec_arrays["object"],
            origin_px=tuple(int(v) for v in rec_arrays["origin_px"]),  # type: ignore[arg-type]
            coverage=rec_arrays["coverage"],
            positions_px=rec_arrays["positions_px"],
            metadata=meta,
        )
    elif "objectGuess" in rec_arrays:
        obj = rec_arrays["objectGuess"]
        n = int(np.asarray(rec_arrays["probeGuess"]).shape[-1]) if "probeGuess" in rec_arrays else 0
        if "xcoords" in rec_arrays and n:
            positions = np.stack([rec_arrays["ycoords"], rec_arrays["xcoords"]], axis=1).astype(
                np.float64
            )
        else:
            positions = np.array([[obj.shape[0] / 2, obj.shape[1] / 2]])
            n = min(obj.shape) * 2
        rec = Reconstruction(
            object=obj,
            origin_px=(0, 0),
            coverage=np.ones(obj.shape, np.float32),
            positions_px=positions,
            metadata={"N": n},
        )
    else:
        raise DataError(
            f"{args.reconstruction}: expected key 'object' (reconstruction.npz) or 'objectGuess'; "
            f"found {sorted(rec_arrays)}"
        )
    if np.asarray(reference).ndim != 2 or np.asarray(rec.object).ndim != 2:
        raise DataError(
            f"expected 2-D complex objects, got reference {np.shape(reference)} and "
            f"reconstruction {np.shape(rec.object)}"
        )
    metrics = write_metrics(rec, np.asarray(reference), out, args.pixel_size_m)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    return 0


# -- demo ----------------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> int:
    from ptychopinn.demo import run_demo as demo

    metrics = demo(
        Path(args.output_dir),
        gridsize=args.gridsize,
        max_epochs=args.max_epochs,
        seed=args.seed,
        overwrite=args.overwrite,
        accelerator=args.accelerator,
    )
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, list)}, indent=2))
    return 0
