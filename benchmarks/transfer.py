"""Train once, reconstruct many: transfer to unseen objects and time to quality (JSON out).

On one machine, with the same torch threads for every step:

1. simulates the "measured" training scan: a random-lines object, N = 64, a 20 x 20 raster
   with a 6 px step (0.5 px jitter), the default defocused-disk probe, ``--train_photons``;
2. trains once as a user would, ``ptychopinn train --synthetic_objects K --max_time T`` (the
   scan plus K scans of random shapes, textures, lines and fields simulated with its probe,
   positions and dose), a fresh process, timed;
3. for each unseen test object (classes the training never saw: a natural image, a Siemens
   star, a microscope image of cells, printed text, the Shepp-Logan phantom, a stained tissue
   section) and each dose, simulates a scan with the same probe and raster (its own jitter)
   and runs, each a fresh process timed from start to files written:
   ``infer --refine 0 --adapt 0`` (network alone), ``infer --refine 0 --adapt A`` (adapted
   network), ``infer --adapt 0`` (refinement alone, until held-out patterns stop improving)
   and the plain ``infer`` (which adapts first where the network explains the scan much
   worse than its training data);
4. runs pty-chi (LSQML, then ePIE) from a flat object with the true probe and positions, one
   epoch at a time, scored after each, up to ``--budget_s``; reports the time each needs to
   reach the phase SSIM of each ptychopinn run and the ratio to that run's wall time.

Usage::

    python benchmarks/transfer.py --out benchmarks/results/transfer.json
    python benchmarks/transfer.py --quick --out /tmp/transfer.json   # 2 objects, minutes

Needs ``ptychi`` for step 4 (see benchmarks/README.md, "Against an iterative solver");
without it step 4 is skipped and said so in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iterative import _loadavg, child_env, ptychi_curve, score  # noqa: E402
from realistic import run  # noqa: E402

from ptychopinn.data.simulate import simulate_scan  # noqa: E402
from ptychopinn.data.synthetic import simulate_like  # noqa: E402
from ptychopinn.io.npz import scan_to_arrays, write_npz  # noqa: E402
from ptychopinn.io.scan import ScanData  # noqa: E402
from ptychopinn.reconstruction import Reconstruction  # noqa: E402

N = 64
POSITIONS = 400
STEP_PX = 6.0
#: Test objects: (name, amplitude image, phase image) from scikit-image's bundled samples,
#: or a simulate object kind. None of them is a training kind.
TEST_OBJECTS: dict[str, tuple[str, str | None]] = {
    "image": ("kind", "image"),
    "star": ("kind", "star"),
    "cells": ("skimage", "cell"),
    "text": ("skimage", "page"),
    "phantom": ("skimage", "shepp_logan_phantom"),
    "tissue": ("skimage", "immunohistochemistry"),
}


def skimage_object(name: str, shape: tuple[int, int]) -> np.ndarray:
    """A sample image as a weakly absorbing phase object: phase +-pi/2, amplitude 0.6-1."""
    from ptychopinn.data.samples import _fit_image, _grey_sample

    height = _fit_image(_grey_sample(name), shape)
    if name == "page":  # dark print on light paper: the print is the structure
        height = 1.0 - height
    amplitude = 1.0 - 0.4 * height
    return (amplitude * np.exp(1j * (np.pi / 2) * (2 * height - 1))).astype(np.complex64)


def test_scan(name: str, photons: float, seed: int) -> ScanData:
    """The scan of test object ``name`` with the training scan's probe and raster."""
    source, value = TEST_OBJECTS[name]
    kind = value if source == "kind" else "grf"
    base = simulate_scan(
        n=N, n_positions=POSITIONS, step_px=STEP_PX, object_kind=kind,  # type: ignore[arg-type]
        photons_per_pattern=photons, seed=seed,
    )  # fmt: skip
    if source == "kind":
        return base
    assert value is not None and base.object is not None
    return simulate_like(
        base, skimage_object(value, base.object.shape), np.random.default_rng(seed)
    )


def read_rec(out: Path) -> Reconstruction:
    with np.load(out / "reconstruction.npz", allow_pickle=False) as npz:
        return Reconstruction(
            N=N,
            object=npz["object"],
            origin_px=(int(npz["origin_px"][0]), int(npz["origin_px"][1])),
            coverage=npz["coverage"],
            positions_px=npz["positions_px"],
            metadata=json.loads(str(npz["metadata"])),
        )


def ptychopinn_runs(
    bundle: Path, scan: ScanData, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """The four ``infer`` variants as fresh processes, timed and scored."""
    path = work / "scan.npz"
    write_npz(
        path, {k: v for k, v in scan_to_arrays(scan).items() if k not in ("objectGuess", "Y")}
    )
    env = child_env(args.threads)
    variants = {
        "network": ["--refine", "0", "--adapt", "0"],
        "network_adapted": ["--refine", "0", "--adapt", str(args.adapt_s)],
        "refined": ["--adapt", "0"],
        "default": [],
    }
    out: dict[str, Any] = {}
    for name in args.variants:
        extra = variants[name]
        target = work / name
        cmd = [
            sys.executable, "-m", "ptychopinn.cli", "infer", "--model_path", str(bundle),
            "--data", str(path), "--output_dir", str(target), "--accelerator", "cpu",
            "--overwrite", "--quiet", *extra,
        ]  # fmt: skip
        wall = run(cmd, env)
        rec = read_rec(target)
        out[name] = {"wall_s": round(wall, 2), **score(rec, scan)}
        adapted = rec.metadata.get("adapt")
        if isinstance(adapted, dict):
            out[name]["adapt_steps"] = adapted.get("steps")
        print(f"  {name}: {out[name]['phase_ssim']:.3f} in {wall:.1f} s", flush=True)
    return out


def first_time(curve: list[dict[str, Any]], target: float) -> float | None:
    for point in curve:
        if point["phase_ssim"] >= target:
            return float(point["t_s"])
    return None


def ptychi_runs(scan: ScanData, ours: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """pty-chi's engines from a flat object; time to reach ptychopinn's default quality."""
    try:
        from iterative import import_ptychi

        import_ptychi()
    except Exception as exc:  # not installed: say so
        return {"skipped": f"pty-chi not available ({type(exc).__name__}: {exc})"}
    options = argparse.Namespace(budget_s=args.budget_s, ptychi_batch_size=96, epie_alpha=0.5)
    result: dict[str, Any] = {}
    for algorithm in ("lsqml", "epie"):
        curve = ptychi_curve(algorithm, scan, options, "cpu")
        points = curve["curve"]
        best = max(points, key=lambda p: p["phase_ssim"]) if points else None
        entry: dict[str, Any] = {
            "setup_s": round(curve["setup_s"], 2),
            "epochs": len(points),
            "best_phase_ssim": None if best is None else best["phase_ssim"],
            "best_t_s": None if best is None else round(best["t_s"], 2),
            "curve": [
                {"t_s": round(p["t_s"], 2), "phase_ssim": round(p["phase_ssim"], 4)} for p in points
            ],  # fmt: skip
        }
        for variant in ours:
            target = ours[variant]["phase_ssim"]
            t = first_time(points, target)
            entry[f"time_to_{variant}_s"] = None if t is None else round(t, 2)
            entry[f"ratio_to_{variant}"] = (
                None if t is None else round(t / ours[variant]["wall_s"], 2)
            )
        result[algorithm] = entry
        print(f"  pty-chi {algorithm}: best {entry['best_phase_ssim']}", flush=True)
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None, help="work directory (default: next to --out)")
    p.add_argument("--train_photons", type=float, default=1e6)
    p.add_argument("--photons", type=float, nargs="+", default=[1e6, 1e4])
    p.add_argument("--synthetic_objects", type=int, default=24)
    p.add_argument("--train_s", type=float, default=1200.0, help="training time budget [s]")
    p.add_argument("--adapt_s", type=float, default=10.0)
    p.add_argument("--budget_s", type=float, default=90.0, help="pty-chi time budget [s]")
    p.add_argument("--objects", nargs="+", default=list(TEST_OBJECTS))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--model", default=None, help="use this trained run instead of training")
    p.add_argument("--no_ptychi", action="store_true")
    p.add_argument("--variants", nargs="+", default=["network", "network_adapted", "refined", "default"],
                   help="infer runs: network (--refine 0 --adapt 0), network_adapted (--refine 0 "
                   "--adapt S), refined (--adapt 0), default (plain infer)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="2 objects, 1e6 only, 120 s training")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.objects, args.photons, args.train_s = ["image", "star"], [1e6], 120.0
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / (out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads)
    result: dict[str, Any] = {
        "setup": {
            "N": N,
            "positions": POSITIONS,
            "step_px": STEP_PX,
            "train_object": "lines",
            "train_photons": args.train_photons,
            "synthetic_objects": args.synthetic_objects,
            "train_s": args.train_s,
            "adapt_s": args.adapt_s,
            "ptychi_budget_s": args.budget_s,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        },  # fmt: skip
        "cases": [],
    }
    if args.model:
        run_dir = Path(args.model)
        result["training"] = {"model": str(run_dir)}
    else:
        train = simulate_scan(
            n=N, n_positions=POSITIONS, step_px=STEP_PX, object_kind="lines",
            photons_per_pattern=args.train_photons, seed=1,
        )  # fmt: skip
        train_path, run_dir = work / "train.npz", work / "run"
        write_npz(train_path, scan_to_arrays(train))
        cmd = [
            sys.executable, "-m", "ptychopinn.cli", "train", "--train_data", str(train_path),
            "--output_dir", str(run_dir), "--max_time", str(args.train_s), "--overwrite",
            "--accelerator", "cpu", "--synthetic_objects", str(args.synthetic_objects),
        ]  # fmt: skip
        load = _loadavg()
        wall = run(cmd, env)
        result["training"] = {"wall_s": round(wall, 1), "load_average": [load, _loadavg()]}
        print(f"trained in {wall:.0f} s", flush=True)
    for photons in args.photons:
        for k, name in enumerate(args.objects):
            print(f"{name} at {photons:.0e}", flush=True)
            scan = test_scan(name, photons, seed=100 + k)
            case_dir = work / f"{name}_{photons:.0e}"
            case_dir.mkdir(exist_ok=True)
            ours = ptychopinn_runs(run_dir, scan, case_dir, args)
            case = {"object": name, "photons": photons, "ptychopinn": ours}
            if not args.no_ptychi:
                case["ptychi"] = ptychi_runs(scan, ours, args)
            result["cases"].append(case)
            out.write_text(json.dumps(result, indent=1))
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
