"""The plain commands, measured: the seed commands verbatim on simulated scans (JSON out).

For each object class, scan size and dose this simulates a scan with ``ptychopinn simulate``,
trains with the seed training command exactly as users have it, reconstructs with the seed
inference command, and reads ``metrics.json`` (the network alone and the default, refined
output, against the ground truth). Every step is a fresh process, timed end to end::

    python -m ptycho_torch.train --train_data_file D.npz --test_data_file D.npz --output_dir RUN \\
        --max_epochs 20 --n_images 256 --gridsize 1 --batch_size 16 --accelerator cpu \\
        --deterministic --num-workers 0 --learning-rate 1e-3 --disable_mlflow
    python -m ptycho_torch.inference --model_path RUN --test_data D.npz --output_dir OUT \\
        --n_images 1024 --accelerator cpu

Usage::

    python benchmarks/defaults.py --out benchmarks/results/defaults.json [--jobs 2]

``--jobs 2`` runs two cases at once with one torch thread each (on 2 cores this finishes
sooner than one case at a time with two threads; each case's times are then those of one
thread sharing the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

SEED_TRAIN = (
    "--max_epochs 20 --n_images 256 --gridsize 1 --batch_size 16 --accelerator cpu "
    "--deterministic --num-workers 0 --learning-rate 1e-3 --disable_mlflow"
).split()
SEED_INFER = "--n_images 1024 --accelerator cpu".split()


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def one_case(obj: str, n_positions: int, photons: float, threads: int, work: Path) -> dict:
    """Simulate, train and infer with the seed commands; the scores and wall times."""
    d = work / f"{obj}_{n_positions}_{photons:g}"
    d.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    simulate = ["-m", "ptychopinn.cli", "simulate", "--output", "D.npz", "--N", "64",
                "--n_positions", str(n_positions), "--object", obj, "--photons", f"{photons:g}",
                "--step_px", "6", "--seed", "0"]  # fmt: skip
    _run(simulate, d, env)
    train = ["-m", "ptycho_torch.train", "--train_data_file", "D.npz", "--test_data_file",
             "D.npz", "--output_dir", "RUN", *SEED_TRAIN]  # fmt: skip
    train_s = _run(train, d, env)
    infer = ["-m", "ptycho_torch.inference", "--model_path", "RUN", "--test_data", "D.npz",
             "--output_dir", "OUT", *SEED_INFER]  # fmt: skip
    infer_s = _run(infer, d, env)
    metrics = json.loads((d / "OUT" / "metrics.json").read_text())
    network, refinement = metrics["network_only"], metrics["refinement"]
    return {
        "object": obj,
        "n_positions": n_positions,
        "photons": photons,
        "threads": threads,
        "train_s": train_s,
        "infer_s": infer_s,
        "network_phase_ssim": network["phase_ssim"],
        "network_amplitude_ssim": network["amplitude_ssim"],
        "final_phase_ssim": metrics["phase_ssim"],
        "final_amplitude_ssim": metrics["amplitude_ssim"],
        "refine_passes": refinement["passes"],
        "stop_reason": refinement["stop_reason"],
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="benchmarks/results/defaults.json")
    p.add_argument("--objects", nargs="+", default=["lines", "grf", "image"])
    p.add_argument("--positions", nargs="+", type=int, default=[196, 576])
    p.add_argument("--photons", nargs="+", type=float, default=[1e6, 1e4])
    p.add_argument("--jobs", type=int, default=1, help="cases at once (one thread each if > 1)")
    args = p.parse_args()
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
    cases = [(o, m, ph) for o in args.objects for m in args.positions for ph in args.photons]
    report: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "commands": {"train": SEED_TRAIN, "infer": SEED_INFER},
        "results": [],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(one_case, *case, threads, Path(tmp)) for case in cases]
        for future in futures:
            result = future.result()
            report["results"].append(result)
            print(json.dumps(result), flush=True)
            Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
