"""Measurements of the speed benchmark, each run in a fresh process by ``benchmarks/run.py``.

A fresh process per measurement keeps warm-up, allocator state and peak memory
(``ru_maxrss``, ``torch.cuda.max_memory_allocated``) specific to that measurement.

Usage (internal)::

    python benchmarks/speed_workers.py SPEC.json
    python benchmarks/speed_workers.py --profile-infer PROFILE RESULT.json -- infer ARGS...

torch and ptychopinn are imported inside the functions so that ``--profile-infer`` can
time those imports itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Work per predict-only batch: enough to amortise per-call overhead, small enough to
#: time many batches (FLOPs).
BATCH_FLOPS = {"cpu": 40e9, "cuda": 4e12}
MAX_BATCH = {"cpu": 64, "cuda": 1024}
#: A large batch, timed for comparison: the ``ptychopinn infer --batch_size`` default when
#: this benchmark was written.
CLI_BATCH = 256
#: Photons per pattern of the simulated scans.
PHOTONS = 1e6


# -- timing --------------------------------------------------------------------------------
def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_repeats(
    fn: Callable[[], Any],
    device: str,
    min_time_s: float,
    min_reps: int = 3,
    max_reps: int = 1000,
    warmup: int = 1,
) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` calls, until ``min_time_s`` and ``min_reps``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (
        time.perf_counter() - start < min_time_s and len(times) < max_reps
    ):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def matmul_rate(device: str, dtype: torch.dtype, size: int, min_time_s: float) -> dict[str, Any]:
    """Dense ``size x size`` matmul: FLOP/s = 2 size**3 / median time."""
    import torch

    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    times = time_repeats(lambda: a @ b, device, min_time_s, warmup=2)
    return {
        "size": size,
        "dtype": str(dtype).replace("torch.", ""),
        "flops_per_s": 2 * size**3 / _median(times),
        "flops_per_s_best": 2 * size**3 / min(times),
        "reps": len(times),
    }


def measure_matmul(device: str, min_time_s: float, bf16: bool = True) -> dict[str, Any]:
    """float32 (bf16; tf32 on a GPU) matmul rates: 2048^2 on a CPU, 8192^2 on a GPU."""
    import torch

    out: dict[str, Any] = {}
    if device == "cuda":
        size = 8192
        previous = torch.backends.cuda.matmul.allow_tf32
        try:
            torch.backends.cuda.matmul.allow_tf32 = False
            out["float32"] = matmul_rate(device, torch.float32, size, min_time_s)
            torch.backends.cuda.matmul.allow_tf32 = True
            out["tf32"] = matmul_rate(device, torch.float32, size, min_time_s)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    else:
        size = 2048
        out["float32"] = matmul_rate(device, torch.float32, size, min_time_s)
    if bf16:
        out["bfloat16"] = matmul_rate(device, torch.bfloat16, size, min_time_s)
    return out


def peak_memory_mb(device: str) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA allocation), MiB."""
    import torch

    out = {"max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 1024**2
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    """Conv / matmul FLOPs of ``fn`` (torch.utils.flop_counter; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- workers ---------------------------------------------------------------------------------
def _load(spec: dict[str, Any]) -> tuple[Any, Any]:
    from ptychopinn.bundle import load_bundle
    from ptychopinn.workflows import read_scan

    return load_bundle(spec["bundle"], map_location=spec["device"]), read_scan(spec["scan"])


def _normalised_amplitudes(bundle: Any, scan: Any, count: int) -> torch.Tensor:
    """The first ``count`` groups as the network sees them: (count, C, N, N)."""
    from ptychopinn.data.dataset import GroupDataset
    from ptychopinn.data.grouping import group_positions

    m = bundle.config.model
    groups = group_positions(scan.positions_px, m.gridsize, None, 0, scan.scan_index)
    dataset = GroupDataset(scan, groups, bundle.normalization.for_scan(scan))
    x = dataset.group_amplitudes(slice(0, count))
    if x.shape[0] < count:  # a scan smaller than the batch: repeat it
        x = x.repeat(-(-count // x.shape[0]), 1, 1, 1)[:count]
    return x


def worker_predict(spec: dict[str, Any]) -> dict[str, Any]:
    """Predict-only throughput: float32, channels-last, bf16 autocast, and the CLI batch size.

    Each variant reports its deviation from float32 on the same batch (amplitude, and
    phase in radians).
    """
    import torch

    device = spec["device"]
    bundle, scan = _load(spec)
    net = bundle.net.eval()
    c, n = bundle.config.model.C, bundle.config.model.N
    with torch.inference_mode():
        flops = count_flops(lambda: net(torch.zeros(1, c, n, n, device=device)))  # per group
    batch = max(1, min(MAX_BATCH[device], 2 ** int(max(0.0, _log2(BATCH_FLOPS[device] / flops)))))
    x = _normalised_amplitudes(bundle, scan, max(batch, CLI_BATCH)).to(device)
    # name: (channels_last, autocast dtype, batch size)
    variants: dict[str, tuple[bool, Any, int]] = {
        "float32": (False, None, batch),
        "channels_last": (True, None, batch),
        "bf16": (False, torch.bfloat16, batch),
        "bf16_channels_last": (True, torch.bfloat16, batch),
    }
    if CLI_BATCH != batch and CLI_BATCH * flops <= 10 * BATCH_FLOPS[device]:
        variants[f"float32_batch{CLI_BATCH}"] = (False, None, CLI_BATCH)
    if spec.get("variants"):
        variants = {k: v for k, v in variants.items() if k in spec["variants"]}
    matmul = measure_matmul(device, min(0.3, spec["min_time_s"]), bf16=False)
    matmul = matmul["float32"]["flops_per_s"]
    out: dict[str, Any] = {
        "parameters": sum(p.numel() for p in net.parameters()),
        "forward_flops_per_pattern": flops / c,
        "batch_size": batch,
        "matmul_float32_flops_per_s_local": matmul,
        "variants": {},
    }
    reference: tuple[torch.Tensor, torch.Tensor] | None = None
    for name, (channels_last, dtype, size) in variants.items():
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(memory_format=fmt)
        xv = x[:size].contiguous(memory_format=fmt)

        def forward(net: Any = net, xv: torch.Tensor = xv, dtype: Any = dtype) -> Any:
            with torch.inference_mode():
                ctx = (
                    torch.autocast(device_type=device, dtype=dtype)
                    if dtype is not None
                    else contextlib.nullcontext()
                )
                with ctx:
                    return net(xv)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        try:
            big = size * flops > 2 * BATCH_FLOPS[device]
            times = time_repeats(
                forward,
                device,
                spec["min_time_s"],
                min_reps=2 if big else 3,
                warmup=1 if big else 2,
            )
        except RuntimeError as exc:  # an unsupported combination on this machine
            out["variants"][name] = {"error": str(exc).splitlines()[0]}
            continue
        cpu_use = (_cpu_seconds() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        amp, phase = (t.float() for t in forward())
        median = _median(times)
        result: dict[str, Any] = {
            "batch_size": size,
            "patterns_per_s": size * c / median,
            "patterns_per_s_best": size * c / min(times),
            "ms_per_pattern": 1e3 * median / (size * c),
            "flops_per_s": flops * size / median,
            "efficiency_local": flops * size / median / matmul,
            "reps": len(times),
            "cpu_utilisation": cpu_use,
        }
        if device == "cuda":
            result["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 1024**2
        if reference is None:
            reference = (amp, phase)
            result["output_std_amplitude"] = float(amp.std())
            result["output_std_phase_rad"] = float(phase.std())
        else:
            k = min(amp.shape[0], reference[0].shape[0])
            d_amp = (amp[:k] - reference[0][:k]).abs()
            d_phase = (phase[:k] - reference[1][:k]).abs()
            result.update(
                max_abs_dev_amplitude=float(d_amp.max()),
                max_abs_dev_phase_rad=float(d_phase.max()),
                mean_abs_dev_amplitude=float(d_amp.mean()),
                mean_abs_dev_phase_rad=float(d_phase.mean()),
            )
        out["variants"][name] = result
    out["memory"] = peak_memory_mb(device)
    return out


def _log2(x: float) -> float:
    import math

    return math.log2(x) if x > 0 else 0.0


def worker_stitch(spec: dict[str, Any]) -> dict[str, Any]:
    """Predict + phase synchronisation + stitching with ``reconstruct`` (after a small warm-up)."""
    import torch

    from ptychopinn.data.simulate import simulate_scan
    from ptychopinn.inference import reconstruct

    device = spec["device"]
    bundle, scan = _load(spec)
    small = simulate_scan(n=scan.N, n_positions=16, photons_per_pattern=PHOTONS, seed=1)
    reconstruct(bundle, small, device=device)  # first-call costs are not per pattern
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    if spec.get("batch_size"):
        rec = reconstruct(bundle, scan, device=device, batch_size=spec["batch_size"])
    else:  # what users get: reconstruct's own default
        rec = reconstruct(bundle, scan, device=device)
    sync(device)
    wall = time.perf_counter() - t0
    n = int(rec.metadata["n_patterns"])
    network_s = float(rec.metadata["network_s"])
    return {
        "n_patterns": n,
        "batch_size": spec.get("batch_size") or "reconstruct default",
        "wall_s": wall,
        "patterns_per_s": n / wall,
        "network_s": network_s,
        "network_patterns_per_s": n / network_s,
        "outside_network_s": wall - network_s,
        "outside_network_fraction": 1 - network_s / wall,
        "canvas_shape": list(rec.object.shape),
        "cpu_utilisation": (_cpu_seconds() - cpu0) / wall,
        "memory": peak_memory_mb(device),
    }


def worker_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Optimiser steps: ``PtychoPINNModule.training_step`` + backward + Adam, batches of the scan.

    Timed in float32, then under bfloat16 autocast (what ``--precision bf16-mixed`` runs).
    """
    import numpy as np
    import torch
    from torch.utils.data import default_collate

    from ptychopinn.config import Config, ModelConfig, TrainingConfig
    from ptychopinn.data.dataset import GroupDataset, Normalization
    from ptychopinn.data.grouping import group_positions
    from ptychopinn.training.module import PtychoPINNModule
    from ptychopinn.workflows import read_scan

    warnings.filterwarnings("ignore", message=".*self.log.*")  # no Trainer attached
    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")
    device = spec["device"]
    scan = read_scan(spec["scan"])
    config = Config(
        model=ModelConfig(N=scan.N, **spec["model"]),
        training=TrainingConfig(batch_size=spec["batch_size"]),
    )
    normalization = Normalization.from_scan(scan)
    torch.manual_seed(0)
    module = PtychoPINNModule(
        config.to_dict(),
        normalization.to_dict(),
        n_probe_modes=scan.n_probe_modes,
        probe=torch.from_numpy(scan.probe),
    ).to(device)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=config.training.learning_rate)
    groups = group_positions(scan.positions_px, config.model.gridsize, None, 0, scan.scan_index)
    dataset = GroupDataset(scan, groups, normalization)
    b = spec["batch_size"]
    order = np.random.default_rng(0).permutation(len(dataset))[: 32 * b]
    batches = [
        {k: v.to(device) for k, v in default_collate([dataset[int(i)] for i in chunk]).items()}
        for chunk in np.array_split(order, max(1, len(order) // b))
    ]
    step_no = [0]

    def step(bf16: bool = False) -> None:
        batch = batches[step_no[0] % len(batches)]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch, step_no[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step_no[0] += 1

    flops = count_flops(lambda: module.training_step(batches[0], 0).backward())
    optimizer.zero_grad(set_to_none=True)
    matmul = measure_matmul(device, min(0.3, spec["min_time_s"]), bf16=False)
    matmul = matmul["float32"]["flops_per_s"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    times = time_repeats(step, device, spec["min_time_s"], min_reps=3, warmup=2)
    cpu_use = (_cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    bf16_times = time_repeats(lambda: step(bf16=True), device, spec["min_time_s"], 3, 2)
    patterns = batches[0]["amplitude"].shape[0] * config.model.C
    median = _median(times)
    return {
        "batch_size": b,
        "steps": len(times),
        "patterns_per_s": patterns / median,
        "patterns_per_s_best": patterns / min(times),
        "ms_per_pattern": 1e3 * median / patterns,
        "train_flops_per_pattern": flops / patterns,
        "flops_per_s": flops / median,
        "efficiency_local": flops / median / matmul,
        "matmul_float32_flops_per_s_local": matmul,
        "cpu_utilisation": cpu_use,
        "bf16_patterns_per_s": patterns / _median(bf16_times),
        "memory": peak_memory_mb(device),
    }


def worker_train_epoch(spec: dict[str, Any]) -> dict[str, Any]:
    """One epoch of ``ptychopinn.workflows.train`` (Lightning, data loader, checkpoints)."""
    from ptychopinn.config import Config, ModelConfig, TrainingConfig
    from ptychopinn.workflows import read_scan, train

    device = spec["device"]
    scan = read_scan(spec["scan"])
    config = Config(
        model=ModelConfig(N=scan.N, **spec["model"]),
        training=TrainingConfig(
            max_epochs=1,
            batch_size=spec["batch_size"],
            n_groups=spec["n_groups"],
            logger="none",
            accelerator="gpu" if device == "cuda" else "cpu",
        ),
    )
    with tempfile.TemporaryDirectory(prefix="ptychopinn-bench-") as tmp:
        t0 = time.perf_counter()
        run = train(config, scan, Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - t0
    return {
        "n_groups": spec["n_groups"],
        "batch_size": spec["batch_size"],
        "wall_s": wall,
        "training_s": run.metrics.get("training_s"),
        "epoch_patterns_per_s": run.metrics.get("patterns_per_s"),
        "memory": peak_memory_mb(device),
    }


WORKERS = {
    "predict": worker_predict,
    "stitch": worker_stitch,
    "train": worker_train,
    "train_epoch": worker_train_epoch,
}


def run_spec(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(int(spec["threads"]))
    result = WORKERS[spec["kind"]](spec)
    Path(spec["result"]).write_text(json.dumps(result))
    return 0


def profile_infer(profile_path: str, result_path: str, argv: list[str]) -> int:
    """``ptychopinn infer`` under cProfile, with its imports done (and timed) beforehand.

    Everything the command imports lazily (torch, ptychopinn, scipy's graph routines,
    matplotlib) is imported first, so the profile shows work only.
    """
    t0 = time.perf_counter()
    import torch

    t1 = time.perf_counter()
    import ptychopinn.cli
    import ptychopinn.commands
    import ptychopinn.inference
    import ptychopinn.workflows  # noqa: F401

    t2 = time.perf_counter()
    import scipy.sparse.csgraph
    import scipy.spatial  # noqa: F401

    t3 = time.perf_counter()
    import matplotlib.backends.backend_agg
    import matplotlib.figure  # noqa: F401

    t4 = time.perf_counter()
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    rc = ptychopinn.cli.main(argv)
    profiler.disable()
    t5 = time.perf_counter()
    profiler.dump_stats(profile_path)
    Path(result_path).write_text(
        json.dumps(
            {
                "returncode": rc,
                "import_torch_s": t1 - t0,
                "import_ptychopinn_s": t2 - t1,
                "import_scipy_s": t3 - t2,
                "import_matplotlib_s": t4 - t3,
                "command_s": t5 - t4,
                "dump_s": time.perf_counter() - t5,
                "torch_threads": torch.get_num_threads(),
            }
        )
    )
    return rc


def main(argv: list[str]) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    if argv and argv[0] == "--profile-infer":
        profile_path, result_path, sep, *rest = argv[1:]
        if sep != "--":
            raise SystemExit("usage: --profile-infer PROFILE RESULT -- infer ARGS...")
        return profile_infer(profile_path, result_path, rest)
    if len(argv) != 1:
        raise SystemExit(__doc__)
    return run_spec(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
