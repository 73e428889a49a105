"""Throughput of ``ptychopinn live``: sustained patterns/s and file-to-canvas latency (JSON).

A writer drops a simulated scan into the watched directory in files of ``--file-patterns``
patterns, each as soon as ``live`` has taken the one before (as fast as ``live`` keeps up)
or every ``--interval-s`` seconds; ``live`` runs as a real process with the page up. The
numbers are ``live``'s own ``/status.json``: patterns over the time spent reading,
predicting and stitching, and each file's latency from its modification time to the canvas.

Usage::

    python benchmarks/live.py --model_path RUN --out benchmarks/results/live.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ptychopinn.data.simulate import simulate_scan
from ptychopinn.io.npz import write_scan_npz
from ptychopinn.workflows import load_bundle


def status(url: str) -> dict:
    with urllib.request.urlopen(url + "status.json", timeout=10) as response:
        return json.loads(response.read())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_path", required=True, help="a trained run (N of its patterns)")
    p.add_argument("--out", required=True)
    p.add_argument("--patterns", type=int, default=8192, help="patterns in all (8192)")
    p.add_argument("--file-patterns", type=int, default=512, help="patterns per file (512)")
    p.add_argument("--interval-s", type=float, default=0.0, help="0: as fast as live keeps up")
    p.add_argument("--accelerator", default="cpu")
    args = p.parse_args(argv)
    n = load_bundle(args.model_path).config.model.N
    scan = simulate_scan(n=n, n_positions=args.patterns, object_kind="grf", seed=11)
    with tempfile.TemporaryDirectory() as tmp:
        watch, out = Path(tmp) / "incoming", Path(tmp) / "OUT"
        watch.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ptychopinn.cli", "live", "--model_path", args.model_path,
             "--watch", str(watch), "--output_dir", str(out), "--port", "0", "--refine", "0",
             "--no_live_refinement", "--linger_s", "1", "--accelerator", args.accelerator],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:
            match = re.search(r"live view at (http://[\d.]+:\d+/)", line)
            if match:
                url = match.group(1)
                break
        assert url is not None, "live did not start"
        latencies, started = [], time.time()
        for k, start in enumerate(range(0, args.patterns, args.file_patterns)):
            index = np.arange(start, min(start + args.file_patterns, args.patterns))
            write_scan_npz(watch / f".f{k:05d}.npz", scan.subset(index))
            os.replace(watch / f".f{k:05d}.npz", watch / f"f{k:05d}.npz")
            while status(url)["patterns"] < index[-1] + 1:
                time.sleep(0.01)
            latencies.append(status(url)["latency_s"])
            time.sleep(args.interval_s)
        final = status(url)
        (watch / "END").write_text("")
        proc.wait(timeout=600)
    result = {
        "benchmark": "live",
        "settings": vars(args),
        "N": n,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "patterns_per_s": final["patterns_per_s"],
        "latency_s": {"median": statistics.median(latencies), "max": max(latencies)},
        "wall_s": time.time() - started,
        "files": final["files"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
