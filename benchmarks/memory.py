"""Memory benchmark: peak resident memory of simulate, train and infer against scan size.

For each scan size M (default 10^4, 3*10^4, 10^5 patterns at N = 64) a chunked HDF5 scan is
simulated straight to disk (``write_simulated_scan_h5``, the path of
``ptychopinn simulate --output scan.h5``), then each measurement runs in a **fresh process**
and reports its own peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``):

``baseline``
    interpreter + torch + lightning + ptychopinn imported, nothing else
``simulate``
    ``write_simulated_scan_h5`` (object, positions and one batch of patterns in memory)
``infer``
    ``read_scan`` + ``reconstruct`` with the default chunk of 4096 patterns (an untrained,
    seeded, cheap network: memory does not depend on the weights)
``train_cached`` / ``train_streamed``
    Lightning ``Trainer.fit`` of ``PtychoPINNModule`` on ``GroupDataModule`` for a fixed number
    of optimiser steps (``limit_train_batches``; ``TrainingConfig`` has no such option, so the
    Trainer is built here rather than by ``workflows.train``), batch 16, no validation, no
    checkpoints. ``cached``: the package default (normalised patterns held in memory up to
    ``IN_MEMORY_LIMIT_BYTES`` = 2 GiB); ``streamed``: that limit set to 0, every item read from
    the file.

Besides the peak RSS each result gives what necessarily grows with M: the positions and the
group tables (``positions_mb``) and, for inference, the output canvas (``canvas_mb``:
numerator, weight and result), so a reader can check that the rest is flat.

Usage::

    python benchmarks/memory.py --out benchmarks/results/memory.json
    python benchmarks/memory.py --sizes 1e4,3e4 --steps 20 --out /tmp/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Bytes of one pattern in the HDF5 file (int32 counts) per pixel.
COUNT_BYTES = 4
PHOTONS = 1e6
CHEAP_MODEL = {"stem_stride": 2, "n_filters_scale": 0.5}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# -- workers (fresh processes) -----------------------------------------------------------------
def _work_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    import lightning  # noqa: F401
    import torch  # noqa: F401

    import ptychopinn.inference  # noqa: F401
    import ptychopinn.training.module  # noqa: F401

    return {}


def _work_simulate(spec: dict[str, Any]) -> dict[str, Any]:
    from ptychopinn.data.simulate import write_simulated_scan_h5

    info = write_simulated_scan_h5(
        spec["scan"], n=spec["N"], n_positions=spec["M"], photons_per_pattern=PHOTONS, seed=0
    )
    return {"object_shape": list(info["object_shape"])}


def _work_infer(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from ptychopinn.workflows import load_bundle, read_scan, reconstruct

    t0 = time.perf_counter()
    scan = read_scan(spec["scan"])
    read_s = time.perf_counter() - t0
    rss_after_read = _rss_mb()
    bundle = load_bundle(spec["bundle"])
    t0 = time.perf_counter()
    rec = reconstruct(bundle, scan)
    h, w = rec.object.shape
    return {
        "read_s": read_s,
        "reconstruct_s": time.perf_counter() - t0,
        "network_s": rec.metadata["network_s"],
        "n_chunks": rec.metadata["n_chunks"],
        "chunk_patterns": rec.metadata["chunk_patterns"],
        "max_rss_mb_after_read": rss_after_read,
        "canvas_shape": [h, w],
        # numerator (complex64) + weight (float32) while stitching, plus the result's object
        # and coverage: what grows with the scanned area
        "canvas_mb": h * w * (8 + 4 + 8 + 4) / 2**20,
        "finite": bool(np.all(np.isfinite(rec.object))),
    }


def _work_train(spec: dict[str, Any]) -> dict[str, Any]:
    import lightning as L
    import torch

    from ptychopinn.config import Config, ModelConfig, TrainingConfig
    from ptychopinn.data import dataset as dataset_module
    from ptychopinn.data.datamodule import GroupDataModule
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.training.module import PtychoPINNModule
    from ptychopinn.workflows import read_scan

    if not spec["cached"]:
        dataset_module.IN_MEMORY_LIMIT_BYTES = 0  # every item read from the file
    config = Config(
        model=ModelConfig(N=spec["N"], **CHEAP_MODEL),
        training=TrainingConfig(batch_size=16, val_fraction=0.0, logger="none", seed=0),
    )
    scan = read_scan(spec["scan"])
    rss_after_read = _rss_mb()
    normalization = Normalization.from_scan(scan)
    datamodule = GroupDataModule(config, scan, normalization)
    module = PtychoPINNModule(
        config.to_dict(),
        normalization.to_dict(),
        n_probe_modes=scan.n_probe_modes,
        probe=torch.from_numpy(scan.probe),
    )
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=spec["steps"],
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    return {
        "fit_s": time.perf_counter() - t0,
        "steps": int(trainer.global_step),
        "max_rss_mb_after_read": rss_after_read,
        "in_memory_cache": datamodule.train_set is not None
        and getattr(datamodule.train_set, "_amplitude", None) is not None,
    }


WORKERS = {
    "baseline": _work_baseline,
    "simulate": _work_simulate,
    "infer": _work_infer,
    "train": _work_train,
}


def _worker(kind: str, spec_json: str) -> int:
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    spec = json.loads(spec_json)
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    t0 = time.perf_counter()
    result = WORKERS[kind](spec)
    result.update(wall_s=time.perf_counter() - t0, max_rss_mb=_rss_mb())
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def measure(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh process and return its report."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    src = Path(__file__).resolve().parents[1] / "src"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len("RESULT ") :])
    print(
        f"  {kind:<16} max RSS {result['max_rss_mb']:8.0f} MB  {result['wall_s']:7.1f} s",
        flush=True,
    )
    return result


def _make_bundle(path: Path, n: int) -> None:
    import torch

    from ptychopinn.bundle import save_bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.data.samples import make_probe
    from ptychopinn.models.cnn import PtychoPINNNet

    torch.manual_seed(0)
    config = Config(model=ModelConfig(N=n, **CHEAP_MODEL))
    probe = torch.from_numpy(make_probe("disk", n))[None]
    power = float(probe.abs().square().sum())
    norm = Normalization(
        N=n, amplitude_factor=(n / 2) / PHOTONS**0.5, nphotons=PHOTONS, probe_power=power
    )
    save_bundle(path, config, norm, PtychoPINNNet(config.model), probe)


def _positions_mb(m: int) -> float:
    """Positions held by every stage: positions and nominal positions (M, 2) float64, scan
    index (M,) int64, groups (indices (M, 1) int64, centres (M, 2), offsets (M, 1, 2))."""
    return m * (2 * 16 + 8 + 8 + 16 + 16) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,3e4,1e5", help="scan sizes M (1e4,3e4,1e5)")
    parser.add_argument("--N", type=int, default=64, help="pattern size (64)")
    parser.add_argument("--steps", type=int, default=30, help="training steps per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--workdir", default=None, help="where the scans go (a temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the simulated scans")
    parser.add_argument("--out", default="benchmarks/results/memory.json")
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(*args.worker)

    sizes = [int(float(v)) for v in args.sizes.split(",")]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="ptychopinn-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    needed = max(sizes) * args.N**2 * COUNT_BYTES * 1.1
    free = shutil.disk_usage(workdir).free
    if free < needed + 2**30:
        parser.error(f"{workdir}: {free / 2**30:.1f} GiB free, need {needed / 2**30:.1f} GiB")
    started = time.perf_counter()
    common = {"N": args.N, "threads": args.threads}
    bundle = workdir / "bundle.zip"
    _make_bundle(bundle, args.N)
    print(f"memory benchmark in {workdir}: N = {args.N}, sizes {sizes}", flush=True)
    report: dict[str, Any] = {
        "command": "python benchmarks/memory.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_start": os.getloadavg(),
        },
        "N": args.N,
        "model": CHEAP_MODEL,
        "train_steps": args.steps,
        "train_batch": 16,
        "baseline": measure("baseline", common),
        "scans": [],
    }
    for m in sizes:
        print(f"M = {m}", flush=True)
        scan = workdir / f"scan_{m}.h5"
        spec = {**common, "M": m, "scan": str(scan), "bundle": str(bundle), "steps": args.steps}
        entry: dict[str, Any] = {"n_patterns": m, "positions_mb": _positions_mb(m)}
        entry["simulate"] = measure("simulate", spec)
        entry["file_mb"] = scan.stat().st_size / 2**20
        entry["infer"] = measure("infer", spec)
        entry["train_cached"] = measure("train", {**spec, "cached": True})
        entry["train_streamed"] = measure("train", {**spec, "cached": False})
        report["scans"].append(entry)
        if not args.keep:
            scan.unlink()
    report["machine"]["load_average_end"] = os.getloadavg()
    report["wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.part")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)
    if not args.keep and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    print(_table(report))
    print(f"wrote {out}")
    return 0


def _table(report: dict[str, Any]) -> str:
    rows = [
        "| patterns | file MB | positions MB | canvas MB | simulate MB | infer MB | "
        "train (cached) MB | train (streamed) MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in report["scans"]:
        rows.append(
            f"| {e['n_patterns']:,} | {e['file_mb']:.0f} | {e['positions_mb']:.1f} | "
            f"{e['infer']['canvas_mb']:.0f} | {e['simulate']['max_rss_mb']:.0f} | "
            f"{e['infer']['max_rss_mb']:.0f} | {e['train_cached']['max_rss_mb']:.0f} | "
            f"{e['train_streamed']['max_rss_mb']:.0f} |"
        )
    rows.append(f"baseline (imports only): {report['baseline']['max_rss_mb']:.0f} MB")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
