"""Realistic conditions: position errors, a defocused probe estimate, an off-centre diffraction
pattern and hot pixels; ptychopinn through its plain commands next to pty-chi (JSON out).

For each position error sigma and dose, on one machine with the same torch threads:

1. simulates a GRF scan (N = 64, raster on whole pixels, 6 px step) with the true probe and
   positions, then makes what a beamline hands over: positions with Gaussian errors of sigma
   px per axis, a probe estimate of the same optic 1.25 times as far from focus, patterns
   shifted by (1, -1) px off the array centre, and 4 hot pixels (flagged in ``bad_pixels``);
2. ptychopinn, as a user runs it, each a fresh process: ``ptychopinn convert`` (the centre
   offset becomes a phase ramp on the probe), ``ptychopinn train`` with the defaults,
   ``ptychopinn infer`` with the defaults, and ``ptychopinn infer --refine_positions
   --refine_probe``; each scored against the truth: phase SSIM and the RMS position error
   (common offset removed) of the positions it returns;
3. pty-chi LSQML from a flat object with the same converted scan, probe estimate and noisy
   positions, its probe and positions optimised (position correction from epoch 2, step 0.3,
   its defaults otherwise), the hot pixels masked; scored after every epoch up to a time budget.

Usage::

    python benchmarks/realistic.py --out benchmarks/results/realistic.json
    python benchmarks/realistic.py --quick --out /tmp/realistic.json   # one case, minutes

Needs ``ptychi`` (see benchmarks/README.md, "Against an iterative solver").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iterative import _loadavg, child_env, import_ptychi, on_object_grid  # noqa: E402

from ptychopinn import workflows as pp  # noqa: E402
from ptychopinn.data.samples import make_probe  # noqa: E402
from ptychopinn.data.simulate import simulate_scan  # noqa: E402
from ptychopinn.io.npz import write_scan_npz  # noqa: E402
from ptychopinn.io.scan import ScanData  # noqa: E402
from ptychopinn.reconstruction import Reconstruction  # noqa: E402

N = 64
DEFOCUS_FACTOR = 1.25
CENTRE_SHIFT = (1, -1)
HOT = ((5, 7), (20, 50), (40, 33), (60, 12))


def position_rms(positions: np.ndarray, truth: np.ndarray) -> float:
    """RMS distance (px) of positions from the truth, their common offset removed."""
    err = positions - truth
    err = err - err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(err**2, axis=1))))


def make_case(sigma: float, photons: float, seed: int, n_positions: int) -> tuple[Any, Any]:
    """(truth, handed-over scan): see the module docstring."""
    truth = simulate_scan(
        n=N, n_positions=n_positions, object_kind="grf", photons_per_pattern=photons, seed=seed,
        step_px=6.0, jitter_px=0.0,
    )  # fmt: skip
    rng = np.random.default_rng(seed + 1000)
    given = truth.positions_px + rng.normal(0.0, sigma, truth.positions_px.shape)
    d = DEFOCUS_FACTOR * N / 3
    estimate = make_probe("disk", N, diameter_px=d, defocus=d / 6)
    counts = np.roll(np.asarray(truth.diffraction), CENTRE_SHIFT, axis=(1, 2))
    bad = np.zeros((N, N), bool)
    for y, x in HOT:
        counts[:, y, x] = 60000
        bad[y, x] = True
    handed = ScanData(
        diffraction=counts, positions_px=given, probe=estimate, units="counts", bad_pixels=bad
    )
    return truth, handed


def run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def scored(out: Path, truth: Any) -> dict[str, Any]:
    rec = Reconstruction.load(out / "reconstruction.npz")
    metrics = pp.evaluate_reconstruction(rec, truth.object).metrics
    refined = rec.refinement
    return {
        "phase_ssim": metrics.phase_ssim,
        "amplitude_ssim": metrics.amplitude_ssim,
        "position_rms_px": position_rms(rec.positions_px, truth.positions_px),
        "passes": None if refined is None else refined.passes,
        "stop_reason": None if refined is None else refined.stop_reason,
    }


def ptychopinn_case(truth: Any, work: Path, threads: int | None) -> dict[str, Any]:
    env = child_env(threads)
    cli = [sys.executable, "-m", "ptychopinn.cli"]
    scan = work / "scan.npz"
    result: dict[str, Any] = {}
    result["convert_s"] = run([*cli, "convert", str(work / "raw.npz"), str(scan)], env)
    result["train_s"] = run(
        [*cli, "train", "--train_data", str(scan), "--output_dir", str(work / "RUN"), "--quiet"],
        env,
    )
    for name, flags in (("default", []), ("refined", ["--refine_positions", "--refine_probe"])):
        out = work / f"OUT_{name}"
        cmd = [*cli, "infer", "--model_path", str(work / "RUN"), "--data", str(scan),
               "--output_dir", str(out), "--quiet", *flags]  # fmt: skip
        wall = run(cmd, env)
        result[name] = {"infer_s": wall, **scored(out, truth)}
        if name == "default":
            result["network"] = scored(out / "network", truth)
    return result


def ptychi_case(
    truth: Any, work: Path, budget_s: float, batch_size: int, device: str
) -> dict[str, Any]:
    """LSQML with probe and position correction from a flat object, scored every epoch."""
    api, task_class, _ = import_ptychi()
    scan = pp.read_scan(work / "scan.npz")  # the converted scan: as ptychopinn gets it
    h, w = truth.object.shape
    origin = np.round(np.array([h / 2, w / 2]))
    positions = scan.positions_px - origin
    options = api.LSQMLOptions()
    options.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
    options.object_options.optimizable = True
    options.probe_options.optimizable = True
    options.probe_position_options.optimizable = True
    options.probe_position_options.optimization_plan.start = 1
    r = options.reconstructor_options
    r.batch_size = batch_size
    r.num_epochs = 100000
    r.random_seed = 0
    r.displayed_loss_function = None
    r.default_device = api.Devices.GPU if device == "cuda" else api.Devices.CPU
    inputs = {
        "diffraction_data": np.asarray(scan.diffraction, dtype=np.float32),
        "object_data": np.ones((1, h, w), dtype=np.complex64),
        "probe_data": (scan.probe / N)[None].astype(np.complex64),
        "probe_position_x_px": positions[:, 1],
        "probe_position_y_px": positions[:, 0],
        "valid_pixel_mask": ~scan.bad_pixels if scan.bad_pixels is not None else None,
    }
    default_device = torch.get_default_device()
    points: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        task = task_class(options, **inputs)
        elapsed = time.perf_counter() - t0
        epoch = 0
        while elapsed < budget_s:
            t0 = time.perf_counter()
            task.run(1)
            elapsed += time.perf_counter() - t0
            epoch += 1
            obj = task.get_data_to_cpu("object", as_numpy=True)[0]
            yx = (
                np.stack(
                    [task.get_probe_positions_y(as_numpy=True), task.get_probe_positions_x(True)], 1
                )
                + origin
            )
            metrics = pp.evaluate_reconstruction(on_object_grid(obj, truth), truth.object).metrics
            points.append({
                "epoch": epoch, "t_s": elapsed, "phase_ssim": metrics.phase_ssim,
                "position_rms_px": position_rms(yx, truth.positions_px),
            })  # fmt: skip
    finally:
        torch.set_default_device(default_device)
    return {"algorithm": "lsqml", "batch_size": batch_size, "curve": points}


def first(curve: list[dict[str, Any]], key: str, good: Any) -> float | None:
    return next((p["t_s"] for p in curve if good(p[key])), None)


def one_case(args: argparse.Namespace, sigma: float, photons: float, root: Path) -> dict[str, Any]:
    work = root / f"s{sigma:g}_p{photons:g}"
    work.mkdir(parents=True, exist_ok=True)
    truth, handed = make_case(sigma, photons, args.seed, args.n_positions)
    write_scan_npz(work / "raw.npz", handed)
    given_rms = position_rms(handed.positions_px, truth.positions_px)
    case: dict[str, Any] = {"sigma_px": sigma, "photons": photons, "given_rms_px": given_rms}
    case["load_average_start"] = _loadavg()
    case["ptychopinn"] = ours = ptychopinn_case(truth, work, args.threads)
    if not args.no_ptychi:
        case["ptychi"] = theirs = ptychi_case(
            truth, work, args.budget_s, args.ptychi_batch_size, args.device
        )
        curve = theirs["curve"]
        target_rms = ours["refined"]["position_rms_px"]
        target_ssim = ours["refined"]["phase_ssim"]
        case["ptychi_summary"] = {
            "best_phase_ssim": max(p["phase_ssim"] for p in curve),
            "final_position_rms_px": curve[-1]["position_rms_px"],
            "time_to_our_position_rms_s": first(
                curve, "position_rms_px", lambda v: v <= target_rms
            ),
            "time_to_our_phase_ssim_s": first(curve, "phase_ssim", lambda v: v >= target_ssim),
            "epochs": len(curve),
        }
    case["load_average_end"] = _loadavg()
    print(json.dumps({k: v for k, v in case.items() if k != "ptychi"}, indent=1), flush=True)
    return case


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--sigmas", default="0.5,1,1.5,2", help="position errors [px] (0.5,1,1.5,2)")
    p.add_argument("--photons", default="1e6,1e4", help="doses (1e6,1e4)")
    p.add_argument("--n-positions", type=int, default=256, help="scan positions (256)")
    p.add_argument("--budget-s", type=float, default=150.0, help="pty-chi seconds per case")
    p.add_argument("--ptychi-batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--no-ptychi", action="store_true", help="ptychopinn only")
    p.add_argument("--quick", action="store_true", help="one case (1.5 px, 1e6), 60 s budget")
    p.add_argument("--work", default=None, help="keep the runs here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.sigmas, args.photons, args.budget_s = "1.5", "1e6", 60.0
    return args


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sigmas = [float(v) for v in args.sigmas.split(",")]
    doses = [float(v) for v in args.photons.split(",")]
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        cases = [one_case(args, s, d, root) for d in doses for s in sigmas]
    _, _, info = import_ptychi() if not args.no_ptychi else (None, None, {})
    result = {
        "benchmark": "realistic",
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__, **info},
        "wall_s": time.time() - started,
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
