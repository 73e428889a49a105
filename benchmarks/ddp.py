"""DDP throughput: training patterns/s with 1 process against 2 (or more) processes (JSON out).

Simulates one scan, then runs ``ptychopinn train`` as a fresh process per setting with the
same global batch: one process with ``threads`` torch threads and ``batch_size``, and
``P`` DDP processes (``--strategy ddp``, gloo on a CPU, NCCL on GPUs) with
``threads / P`` threads each and ``batch_size / P`` per process. Reads the throughput the
training module logs per epoch (summed over the ranks) from ``metrics.csv`` and reports
the median over the epochs after the first (warm-up).

Usage::

    python benchmarks/ddp.py --out benchmarks/results/ddp.json [--processes 2] [--epochs 3]
    python benchmarks/ddp.py --accelerator gpu --processes 4 --out ddp-gpu.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def train(
    work: Path, name: str, processes: int, threads: int, args: argparse.Namespace
) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [
        sys.executable, "-m", "ptychopinn.cli", "train",
        "--train_data_file", "scan.npz", "--output_dir", name,
        "--max_epochs", str(args.epochs), "--batch_size", str(args.batch_size // processes),
        "--n_filters_scale", str(args.n_filters_scale), "--stem_stride", str(args.stem_stride),
        "--accelerator", args.accelerator, "--devices", str(processes), "--quiet",
    ]  # fmt: skip
    if processes > 1:
        command += ["--strategy", "ddp"]
    t0 = time.perf_counter()
    subprocess.run(command, cwd=work, env=env, check=True, timeout=3600)
    wall = time.perf_counter() - t0
    (log,) = (work / name).glob("lightning_logs/*/metrics.csv")
    with log.open() as f:
        rates = [float(r["patterns_per_s"]) for r in csv.DictReader(f) if r.get("patterns_per_s")]
    steady = rates[1:] or rates
    return {
        "processes": processes,
        "threads_per_process": threads,
        "batch_per_process": args.batch_size // processes,
        "global_batch": args.batch_size,
        "patterns_per_s_per_epoch": rates,
        "patterns_per_s": statistics.median(steady),
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON output file")
    parser.add_argument("--processes", type=int, default=2, help="DDP processes to compare with 1")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n_patterns", type=int, default=1024)
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16, help="global batch")
    parser.add_argument("--n_filters_scale", type=float, default=1.0)
    parser.add_argument("--stem_stride", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    if args.batch_size % args.processes:
        parser.error("--batch_size must be divisible by --processes")

    with tempfile.TemporaryDirectory(prefix="ptychopinn_ddp_") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "ptychopinn.cli", "simulate", "--output", "scan.npz",
             "--N", str(args.N), "--n_images", str(args.n_patterns), "--object", "image",
             "--seed", "0"],
            cwd=work, check=True, timeout=600, capture_output=True,
        )  # fmt: skip
        load0 = os.getloadavg()
        single = train(work, "single", 1, args.threads, args)
        multi = train(work, "ddp", args.processes, max(1, args.threads // args.processes), args)
        load1 = os.getloadavg()
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "loadavg_start": load0,
            "loadavg_end": load1,
        },
        "settings": vars(args) | {"out": str(args.out)},
        "single": single,
        "ddp": multi,
        "speedup": multi["patterns_per_s"] / single["patterns_per_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(
        f"1 process: {single['patterns_per_s']:.1f} patterns/s; "
        f"{args.processes} processes: {multi['patterns_per_s']:.1f} patterns/s "
        f"(x{result['speedup']:.2f})"
    )


if __name__ == "__main__":
    main()
