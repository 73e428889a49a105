"""Quality benchmark: network alone, network + refinement, refinement from flat (JSON out).

For each object class (random lines, Gaussian random field, natural image) and dose,
simulates scan A and scan B (same probe and scan geometry, different object), trains
self-supervised on A, then scores against ground truth with the SPEC §8 metrics:

* ``self``: reconstruct A with the model trained on A (network alone, then + refinement)
* ``transfer``: reconstruct B with the model trained on A
* ``flat``: refinement of A from a flat object with the same number of passes
* with ``--pass-counts``: time to quality, the default refinement of A run to each pass count
  separately (its schedule depends on the count) from the network and from a flat object

Usage::

    python benchmarks/quality.py --out benchmarks/results/quality.json [--quick] [--accelerator auto]
    python benchmarks/quality.py --preset overlap ...   # the network of `train --preset overlap`
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ptychopinn import workflows as pp
from ptychopinn.commands import CPU_PRESET, TRAIN_PRESETS, native_bf16
from ptychopinn.config import Config, ModelConfig, TrainingConfig
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.refinement import RefineOptions, refine

KEYS = ("phase_ssim", "amplitude_ssim", "phase_mae", "amplitude_mae", "frc50_rings")


def score(rec: Any, scan: Any) -> dict[str, Any]:
    metrics = pp.evaluate_reconstruction(rec, scan.object).metrics.to_dict()
    return {k: metrics[k] for k in KEYS}


def one_case(args: argparse.Namespace, obj: str, photons: float, work: Path) -> dict[str, Any]:
    common = dict(
        n=args.N, object_kind=obj, n_positions=args.n_positions, photons_per_pattern=photons
    )
    scan_a = simulate_scan(seed=0, **common)
    scan_b = simulate_scan(seed=1, **common)
    config = Config(
        model=ModelConfig(
            N=args.N,
            gridsize=args.gridsize,
            group_stride=args.group_stride,
            n_filters_scale=args.n_filters_scale,
            stem_stride=args.stem_stride,
            architecture=args.architecture,
            mode=args.mode,
            per_pattern=args.per_pattern,
            norm_layer=args.norm_layer,
            merge_weights=args.merge_weights,
        ),
        training=TrainingConfig(
            max_epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            scheduler="cosine",
            warmup_fraction=args.warmup_fraction,
            adam_beta2=args.adam_beta2,
            n_groups=args.n_groups,
            logger="none",
            accelerator=args.accelerator,
            precision=args.precision,
        ),
    )
    run = pp.train(config, scan_a, work / f"{obj}_{photons:g}", progress=False)
    device = "cuda" if torch.cuda.is_available() and args.accelerator != "cpu" else "cpu"
    bundle = pp.load_bundle(run.bundle_path, map_location=device)
    out: dict[str, Any] = {
        "object": obj,
        "photons": photons,
        "training_s": run.metrics.get("training_s"),
    }
    network: dict[str, Any] = {}  # the network's reconstruction of each scan
    for name, scan in (("self", scan_a), ("transfer", scan_b)):
        t0 = time.perf_counter()
        rec = network[name] = pp.reconstruct(bundle, scan, device=device)
        infer_s = time.perf_counter() - t0
        out[f"{name}_network"] = {**score(rec, scan), "inference_s": infer_s}
        t0 = time.perf_counter()
        refined = pp.refine_reconstruction(bundle, scan, rec, passes=args.refine, device=device)
        out[f"{name}_refined"] = {**score(refined, scan), "refine_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    norm = bundle.normalization.for_scan(scan_a)
    flat, _, _ = refine(scan_a, bundle.probe, norm, None, RefineOptions(n_iter=args.refine), device)
    out["self_flat_refined"] = {**score(flat, scan_a), "refine_s": time.perf_counter() - t0}
    if args.pass_counts:
        out["time_to_quality"] = {"inference_s": out["self_network"]["inference_s"]}
        for name, start in (("network", network["self"]), ("flat", None)):
            points = []
            for count in args.pass_counts:
                t0 = time.perf_counter()
                refined, _, _ = refine(
                    scan_a, bundle.probe, norm, start, RefineOptions(n_iter=count), device
                )
                points.append(
                    {
                        "passes": count,
                        "refine_s": time.perf_counter() - t0,
                        **score(refined, scan_a),
                    }
                )
            out["time_to_quality"][name] = points
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="benchmarks/results/quality.json")
    p.add_argument("--quick", action="store_true", help="one object, one dose, few epochs")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--n_positions", type=int, default=576)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument(
        "--precision",
        default="32-true",
        help="training precision (bf16-mixed: 1.5-1.7x faster on CPUs with native bfloat16)",
    )
    p.add_argument("--gridsize", type=int, default=1)
    p.add_argument(
        "--per_pattern",
        action="store_true",
        help="at gridsize > 1, one network per pattern (shared weights), not the group as channels",
    )
    p.add_argument(
        "--group_stride",
        type=int,
        default=1,
        help="spacing of a group's members in scan steps (1: nearest neighbours)",
    )
    p.add_argument(
        "--n_groups",
        type=int,
        default=None,
        help="training groups (default: every pattern seeds one); n_positions / gridsize**2 "
        "trains on as many patterns per epoch as gridsize 1",
    )
    p.add_argument("--n_filters_scale", type=float, default=CPU_PRESET["n_filters_scale"])
    p.add_argument("--stem_stride", type=int, default=CPU_PRESET["stem_stride"])
    p.add_argument(
        "--architecture",
        default=CPU_PRESET["architecture"],
        choices=["ptychopinn", "backprop_unet"],
        help="network (default: the CPU preset's; --architecture ptychopinn for the cheap CNN)",
    )
    p.add_argument(
        "--mode",
        default="unsupervised",
        choices=["unsupervised", "supervised"],
        help="supervised: train on the ground-truth patches (an upper bound for the network)",
    )
    p.add_argument("--norm_layer", default="batch", choices=["batch", "layer", "group", "none"])
    p.add_argument(
        "--merge_weights",
        default="probe",
        choices=["probe", "support"],
        help="at gridsize > 1: weights of a group's patches in the merged object of the loss",
    )
    p.add_argument("--warmup_fraction", type=float, default=0.0, help="linear warmup, of the steps")
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument(
        "--preset",
        choices=sorted(TRAIN_PRESETS),
        default=None,
        help="the defaults of `ptychopinn train --preset` (incl. bf16-mixed where native); "
        "the flags given still win",
    )
    p.add_argument("--refine", type=int, default=100, help="refinement passes")
    p.add_argument(
        "--pass-counts",
        type=int,
        nargs="+",
        default=[],
        help="also refine scan A to each of these pass counts from the network and from flat",
    )
    p.add_argument("--objects", nargs="+", default=["lines", "grf", "image"])
    p.add_argument("--photons", nargs="+", type=float, default=[1e6, 1e4])
    given = p.parse_known_args()[0]  # the preset's values become defaults, flags still win
    preset = TRAIN_PRESETS.get(given.preset or "")
    if preset:
        names = {"max_epochs": "epochs", "learning_rate": "lr"}
        values = {**preset["model"], **preset["training"]}
        p.set_defaults(**{names.get(k, k): v for k, v in values.items() if k != "scheduler"})
        if native_bf16(given.accelerator):
            p.set_defaults(precision="bf16-mixed")
    args = p.parse_args()
    if args.quick:
        args.objects, args.photons, args.epochs, args.refine = ["image"], [1e6], 5, 20
    results: list[dict[str, Any]] = []
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "settings": vars(args),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for obj in args.objects:
            for photons in args.photons:
                case = one_case(args, obj, photons, Path(tmp))
                case["loadavg"] = os.getloadavg()
                results.append(case)
                print(json.dumps(case), flush=True)
                # rewritten after every case, so a long run that is stopped keeps what it measured
                Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
