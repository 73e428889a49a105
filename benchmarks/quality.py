"""Quality benchmark: network alone, the default inference, refinement from flat (JSON out).

For each object class (random lines, Gaussian random field, natural image) and dose,
simulates scan A and scan B (same probe and scan geometry, different object), trains
self-supervised on A with the default recipe (or ``--preset``, and any ``ptychopinn train``
flag: the options are the config's own), then scores against ground truth:

* ``self``: reconstruct A with the model trained on A: the network alone, and the default
  inference (``refine="auto"``, held-out stopping), and ``--refine`` fixed passes
* ``transfer``: reconstruct B with the model trained on A (network alone and default)
* ``flat``: refinement of A from a flat object with ``--refine`` passes
* with ``--pass-counts``: time to quality, fixed refinement of A to each pass count
  (its schedule depends on the count) from the network and from a flat object

Usage::

    python benchmarks/quality.py --out benchmarks/results/quality.json [--quick]
    python benchmarks/quality.py --preset fast --max_epochs 30 ...   # another recipe
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
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.device import torch_device
from ptychopinn.options import add_config_arguments, config_overrides, resolve_config
from ptychopinn.presets import RECIPES
from ptychopinn.refinement import RefineOptions, refine

KEYS = ("phase_ssim", "amplitude_ssim", "phase_mae", "amplitude_mae", "frc50_rings")


def score(rec: Any, scan: Any) -> dict[str, Any]:
    metrics = pp.evaluate_reconstruction(rec, scan.object).metrics.to_dict()
    return {k: metrics[k] for k in KEYS}


def _timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    return function(*args, **kwargs), time.perf_counter() - start


def one_case(args: argparse.Namespace, obj: str, photons: float, work: Path) -> dict[str, Any]:
    common = dict(
        n=args.N, object_kind=obj, n_positions=args.n_positions, photons_per_pattern=photons
    )
    scan_a = simulate_scan(seed=0, **common)
    scan_b = simulate_scan(seed=1, **common)
    flags = config_overrides(args)
    flags["training"].setdefault("logger", "none")
    config, _ = resolve_config(args.preset, args.config, flags, args.N)
    run = pp.train(config, scan_a, work / f"{obj}_{photons:g}", progress=False)
    device = torch_device(config.training.accelerator)
    bundle = pp.load_bundle(run.bundle_path, map_location=device)
    out: dict[str, Any] = {
        "object": obj,
        "photons": photons,
        "recipe": run.recipe,
        "training_s": run.metrics.get("training_s"),
    }
    network: dict[str, Any] = {}  # the network's reconstruction of each scan
    for name, scan in (("self", scan_a), ("transfer", scan_b)):
        rec, infer_s = _timed(pp.network_reconstruction, bundle, scan, device=device)
        network[name] = rec
        out[f"{name}_network"] = {**score(rec, scan), "inference_s": infer_s}
        auto, auto_s = _timed(pp.refine_reconstruction, bundle, scan, rec, "auto", device=device)
        passes = auto.refinement.passes if auto.refinement else 0
        out[f"{name}_default"] = {**score(auto, scan), "refine_s": auto_s, "passes": passes}
    fixed, fixed_s = _timed(
        pp.refine_reconstruction, bundle, scan_a, network["self"], args.refine, device=device
    )
    out["self_refined"] = {**score(fixed, scan_a), "refine_s": fixed_s, "passes": args.refine}
    norm = bundle.normalization.for_scan(scan_a)
    flat, flat_s = _timed(
        refine, scan_a, bundle.probe, norm, None, RefineOptions(n_iter=args.refine), device
    )
    out["self_flat_refined"] = {**score(flat[0], scan_a), "refine_s": flat_s}
    if args.pass_counts:
        out["time_to_quality"] = _time_to_quality(args, bundle, scan_a, network["self"], device)
    return out


def _time_to_quality(
    args: argparse.Namespace, bundle: Any, scan: Any, network: Any, device: Any
) -> dict[str, Any]:
    """Phase SSIM after each of ``--pass-counts`` fixed passes, from the network and flat."""
    out: dict[str, Any] = {}
    for name, start in (("network", network), ("flat", None)):
        points = []
        for count in args.pass_counts:
            rec, seconds = _timed(
                pp.refine_reconstruction, bundle, scan, start, count, device=device
            )
            points.append({"passes": count, "refine_s": seconds, **score(rec, scan)})
        out[name] = points
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="benchmarks/results/quality.json")
    p.add_argument("--quick", action="store_true", help="one object, one dose, few epochs")
    p.add_argument("--N", type=int, default=64)
    p.add_argument("--n_positions", type=int, default=576)
    p.add_argument("--preset", choices=sorted(RECIPES), default=None, help="recipe (overlap)")
    p.add_argument("--config", default=None, help="JSON config over the recipe")
    p.add_argument("--refine", type=int, default=100, help="fixed refinement passes")
    p.add_argument(
        "--pass-counts",
        type=int,
        nargs="+",
        default=[],
        help="also refine scan A to each of these pass counts from the network and from flat",
    )
    p.add_argument("--objects", nargs="+", default=["lines", "grf", "image"])
    p.add_argument("--photons", nargs="+", type=float, default=[1e6, 1e4])
    add_config_arguments(p)  # every ptychopinn train option, from the config fields
    args = p.parse_args()
    if args.quick:
        args.objects, args.photons, args.refine = ["image"], [1e6], 20
        setattr(args, "training.max_epochs", 2)
    results: list[dict[str, Any]] = []
    report = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "settings": {k: v for k, v in vars(args).items() if v is not None},
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
