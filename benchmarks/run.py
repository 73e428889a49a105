"""Speed benchmark: inference, stitching, end-to-end ``ptychopinn infer`` and training (JSON out).

Measures, in one run on one machine:

* the machine's dense matmul rate, the reference of every efficiency figure;
* for N = 64 and 128 and four networks (``default``, ``cheap`` and ``tiny`` of the
  PtychoPINN CNN family, and ``unet``, the CPU preset's physics-informed U-Net): parameters,
  forward FLOPs per pattern, predict-only throughput (float32, channels-last, bf16 autocast,
  with their deviation from float32), predict + stitch
  (:func:`ptychopinn.inference.reconstruct`), the end-to-end ``ptychopinn infer`` process
  and a profile of where its time goes, training throughput and peak memory.

Every measurement runs in a fresh process (``benchmarks/speed_workers.py``). The networks
are untrained (seeded initialisation): speed does not depend on the weights.

Usage::

    python benchmarks/run.py --out benchmarks/results/speed.json [--quick] [--device cpu|cuda|auto]

Needs torch, lightning, numpy, scipy, scikit-image, h5py, matplotlib and safetensors;
``ptychopinn`` comes from the installed package or from ``src/`` beside this directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
try:
    import ptychopinn
except ImportError:  # a checkout without an install
    sys.path.insert(0, str(REPO / "src"))
    import ptychopinn

sys.path.insert(0, str(HERE))
from speed_workers import PHOTONS, measure_matmul, peak_memory_mb  # noqa: E402

#: Networks (ModelConfig keywords): the PtychoPINN CNN at three sizes and the default network
#: (the physics-informed U-Net on its window); one pattern per input and per training group.
_CNN = {"architecture": "ptychopinn", "overlap_grid": 1, "overlap_stride": 1}
PRESETS: dict[str, dict[str, Any]] = {
    "default": {**_CNN, "n_filters_scale": 2.0, "stem_stride": 1},
    "cheap": {**_CNN, "n_filters_scale": 1.0, "stem_stride": 2},
    "tiny": {**_CNN, "n_filters_scale": 0.5, "stem_stride": 2},
    "unet": {"overlap_grid": 1, "overlap_stride": 1},
}

#: Measurements: predict-only, reconstruct(), ptychopinn infer, its profile, training
#: steps, one Lightning epoch.
ALL = ("predict", "stitch", "e2e", "profile", "train", "train_epoch")

#: What each mode measures: patterns per scan, seconds per timing, the predict-only
#: variants and the measurements of each (N, preset) case.
MODES: dict[str, dict[str, Any]] = {
    "full": {
        "n_patterns": {64: 1024, 128: 1024},
        "min_time_s": 3.0,
        "variants": None,  # all
        "lightning_epoch_s": 15.0,
        "cases": {
            (n, preset): ALL if (n, preset) != (128, "default") else ALL[:3] + ALL[4:]
            for n in (64, 128)
            for preset in ("default", "cheap", "tiny", "unet")
        },
    },
    "quick": {
        "n_patterns": {64: 1024, 128: 256},
        "min_time_s": 0.5,
        "variants": ("float32", "channels_last", "bf16"),
        "lightning_epoch_s": None,
        "cases": {
            (64, "default"): ("predict",),
            (64, "cheap"): ("predict",),
            (64, "tiny"): ("predict",),
            (64, "unet"): ("predict", "stitch", "e2e", "profile", "train"),
            (128, "unet"): ("predict", "e2e"),
        },
    },
}

#: (file suffix, function) -> name, read from the cProfile of ``ptychopinn infer``.
PROFILE_FUNCTIONS = {
    ("ptychopinn/cli.py", "main"): "cli_main",
    ("ptychopinn/bundle.py", "load_bundle"): "load_bundle",
    ("ptychopinn/workflows.py", "read_scan"): "read_scan",
    ("ptychopinn/inference.py", "reconstruct"): "reconstruct",
    ("ptychopinn/inference.py", "predict_patches"): "predict_patches",
    ("ptychopinn/stitching/phase_sync.py", "synchronize_phases"): "synchronize_phases",
    ("ptychopinn/stitching/canvas.py", "add"): "stitch_add",
    ("ptychopinn/stitching/canvas.py", "result"): "stitch_result",
    ("ptychopinn/data/dataset.py", "__init__"): "dataset_init",
    ("ptychopinn/reconstruction.py", "save"): "save",
    ("ptychopinn/io/npz.py", "write_npz"): "write_npz",
    ("ptychopinn/io/images.py", "save_image"): "write_png",
    ("ptychopinn/workflows.py", "write_metrics"): "write_metrics",
}


# -- machine -------------------------------------------------------------------------------
def describe_machine(device: str) -> dict[str, Any]:
    """CPU model, cores, threads, library versions and the GPU, if any."""
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_capability": _safe(lambda: str(torch.backends.cpu.get_cpu_capability())),
        "memory_gb": _memory_gb(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "ptychopinn": ptychopinn.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": _loadavg(),
        "device": device,
    }
    with contextlib.suppress(ImportError):
        import lightning

        info["lightning"] = lightning.__version__
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu_name=props.name,
            gpu_memory_gb=round(props.total_memory / 1024**3, 1),
            gpu_count=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info


def _safe(fn: Any) -> Any:
    with contextlib.suppress(Exception):
        return fn()
    return None


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError):
        return [round(v, 2) for v in os.getloadavg()]
    return None


def _git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()

    with contextlib.suppress(Exception):
        head = git("rev-parse", "--short", "HEAD")
        if head:
            dirty = git("status", "--porcelain", "--untracked-files=no")
            return head + ("+dirty" if dirty else "")
    return None


# -- processes -------------------------------------------------------------------------------
def child_env(threads: int | None) -> dict[str, str]:
    """Environment of child processes: this ``ptychopinn`` first on the path."""
    env = dict(os.environ)
    src = str(Path(ptychopinn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def run_process(cmd: list[str], cwd: Path, threads: int | None) -> dict[str, Any]:
    """Run ``cmd``: wall time from launch to exit, exit status, the child's own peak RSS."""
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(threads), stdout=out_f, stderr=err_f)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of this child alone
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = (f.read().decode(errors="replace") for f in (out_f, err_f))
    return {
        "wall_s": wall,
        "returncode": proc.returncode,
        "max_rss_mb": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "stdout": stdout,
        "stderr_tail": stderr[-3000:],
    }


class Runner:
    """Runs workers and ``ptychopinn infer`` processes in one work directory."""

    def __init__(self, work: Path, device: str, threads: int | None):
        self.work, self.device, self.threads = work, device, threads
        self._count = 0

    def _name(self, stem: str) -> Path:
        self._count += 1
        return self.work / f"{self._count:03d}_{stem}"

    def worker(self, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
        base = self._name(f"{kind}_{spec.get('tag', '')}")
        spec = {
            **spec,
            "kind": kind,
            "device": self.device,
            "threads": self.threads,
            "result": f"{base}.result.json",
        }
        Path(f"{base}.spec.json").write_text(json.dumps(spec))
        proc = run_process(
            [sys.executable, str(HERE / "speed_workers.py"), f"{base}.spec.json"],
            self.work,
            self.threads,
        )
        if proc["returncode"] != 0:
            return {"error": f"{kind} worker failed", "stderr_tail": proc["stderr_tail"]}
        result = json.loads(Path(spec["result"]).read_text())
        result["process"] = {k: proc[k] for k in ("wall_s", "max_rss_mb", "cpu_s")}
        return result

    def infer_args(self, bundle: Path, scan: Path, out: Path) -> list[str]:
        accelerator = "gpu" if self.device == "cuda" else "cpu"
        return [
            *("infer", "--model_path", str(bundle), "--test_data", str(scan)),
            *("--output_dir", str(out), "--accelerator", accelerator, "--quiet"),
        ]

    def e2e(self, bundle: Path, scan: Path) -> dict[str, Any]:
        """``python -m ptychopinn.cli infer`` as a fresh process."""
        out = self._name("infer")
        cmd = [sys.executable, "-m", "ptychopinn.cli", *self.infer_args(bundle, scan, out)]
        proc = run_process(cmd, self.work, self.threads)
        if proc["returncode"] != 0:
            return {"error": "ptychopinn infer failed", "stderr_tail": proc["stderr_tail"]}
        meta = reconstruction_metadata(out)
        n, network_s, wall = int(meta["n_patterns"]), float(meta["network_s"]), proc["wall_s"]
        return {
            "n_patterns": n,
            "wall_s": wall,
            "patterns_per_s": n / wall,
            "network_s": network_s,
            "reconstruct_s": float(meta["elapsed_s"]),
            "outside_network_s": wall - network_s,
            "outside_network_fraction": 1 - network_s / wall,
            "max_rss_mb": proc["max_rss_mb"],
            "cpu_utilisation": proc["cpu_s"] / wall,
        }

    def e2e_profile(self, bundle: Path, scan: Path) -> dict[str, Any]:
        """Where the time of ``ptychopinn infer`` goes (see :func:`phases_from_profile`)."""
        out = self._name("infer_profiled")
        prof, timing = Path(f"{out}.prof"), Path(f"{out}.timing.json")
        cmd = [
            *(sys.executable, str(HERE / "speed_workers.py"), "--profile-infer"),
            *(str(prof), str(timing), "--", *self.infer_args(bundle, scan, out)),
        ]
        proc = run_process(cmd, self.work, self.threads)
        if proc["returncode"] != 0:
            return {"error": "profiled ptychopinn infer failed", "stderr_tail": proc["stderr_tail"]}
        return phases_from_profile(
            prof, json.loads(timing.read_text()), reconstruction_metadata(out), proc["wall_s"]
        )


def reconstruction_metadata(out: Path) -> dict[str, Any]:
    """The metadata ``ptychopinn infer`` stored in ``out/reconstruction.npz``."""
    with np.load(out / "reconstruction.npz", allow_pickle=False) as npz:
        return json.loads(str(npz["metadata"]))


def phases_from_profile(
    prof: Path, timing: dict[str, float], meta: dict[str, Any], wall_s: float
) -> dict[str, Any]:
    """Seconds and fractions of the e2e wall time per phase.

    Imports are timed before the command runs; the command's phases are cumulative
    cProfile times of named functions; ``predict`` is the network time ``reconstruct``
    measures itself (forward pass and copy to the host).
    """
    cum: dict[str, float] = {}
    for (filename, _, func), (_, _, _, ct, _) in pstats.Stats(str(prof)).stats.items():  # type: ignore[attr-defined]
        name = PROFILE_FUNCTIONS.get((_package_path(filename), func))
        if name is not None:
            cum[name] = cum.get(name, 0.0) + ct
    get = cum.get
    predict = float(meta["network_s"])
    stitch = get("stitch_add", 0.0) + get("stitch_result", 0.0)
    sync = get("synchronize_phases", 0.0)
    imports = sum(v for k, v in timing.items() if k.startswith("import_"))
    phases = {
        "python_start_and_exit": wall_s - imports - timing["command_s"] - timing["dump_s"],
        "imports": imports,
        "load_bundle": get("load_bundle", 0.0),
        "read_scan": get("read_scan", 0.0),
        # what reconstruct() does besides the network, synchronisation and stitching
        "prepare_data": max(0.0, get("reconstruct", 0.0) - predict - sync - stitch),
        "predict": predict,
        "synchronize_phases": sync,
        "stitch": stitch,
        "write_npz": get("write_npz", 0.0),
        "write_png": get("write_png", 0.0),
        "write_metrics": get("write_metrics", 0.0),
    }
    phases["other"] = timing["command_s"] - sum(
        v for k, v in phases.items() if k not in ("python_start_and_exit", "imports")
    )
    total = wall_s - timing["dump_s"]
    stitch_io = sum(
        phases[k]
        for k in (
            "load_bundle",
            "read_scan",
            "synchronize_phases",
            "stitch",
            "write_npz",
            "write_png",
        )
    )
    # A phase whose function cProfile did not report is counted as 0 and lands in "other";
    # seen once, on a GPU machine under Python 3.12 (load_bundle and reconstruct missing).
    unmatched = sorted(
        name
        for name in ("cli_main", "load_bundle", "read_scan", "reconstruct", "write_npz")
        if name not in cum
    )
    return {
        "wall_s": total,
        "unmatched_functions": unmatched,
        "phases_s": phases,
        "fractions": {k: v / total for k, v in phases.items()},
        "imports_s": {k: v for k, v in timing.items() if k.startswith("import_")},
        "stitch_and_io_fraction": stitch_io / total,
        "outside_network_fraction": 1 - predict / total,
        "details_s": {k: get(k, 0.0) for k in ("dataset_init", "save", "predict_patches")},
        "note": (
            "imports done and timed before the command; phases are cProfile cumulative times; "
            "stitch_and_io = load_bundle + read_scan + synchronize_phases + stitch + write_npz "
            "+ write_png"
        ),
    }


def _package_path(filename: str) -> str:
    """``.../src/ptychopinn/data/dataset.py`` -> ``ptychopinn/data/dataset.py``."""
    parts = Path(filename).parts
    if "ptychopinn" not in parts:
        return filename
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("ptychopinn") :])


def measure_startup(runner: Runner) -> dict[str, Any]:
    """A bare interpreter start and the imports ``ptychopinn infer`` needs, fresh processes."""
    code = (
        "import time, json; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); "
        "import ptychopinn.cli, ptychopinn.commands, ptychopinn.workflows; "
        "t2 = time.perf_counter(); import scipy.sparse.csgraph, scipy.spatial; "
        "t3 = time.perf_counter(); import matplotlib.figure, matplotlib.backends.backend_agg; "
        "t4 = time.perf_counter(); print(json.dumps({'import_torch_s': t1 - t0, "
        "'import_ptychopinn_s': t2 - t1, 'import_scipy_s': t3 - t2, "
        "'import_matplotlib_s': t4 - t3}))"
    )
    bare = [
        run_process([sys.executable, "-c", "pass"], runner.work, runner.threads)["wall_s"]
        for _ in range(3)
    ]
    proc = run_process([sys.executable, "-c", code], runner.work, runner.threads)
    out: dict[str, Any] = {"python_start_s": min(bare), "imports_process_wall_s": proc["wall_s"]}
    with contextlib.suppress(json.JSONDecodeError, IndexError):
        out.update(json.loads(proc["stdout"].strip().splitlines()[-1]))
    return out


# -- cases -----------------------------------------------------------------------------------
@contextlib.contextmanager
def work_directory(keep: str | None) -> Iterator[Path]:
    if keep:
        path = Path(keep)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="ptychopinn-bench-") as tmp:
            yield Path(tmp)


def prepare_scan(n: int, n_patterns: int, work: Path) -> tuple[Path, dict[str, Any], Any]:
    """Simulate a scan; write it as a scan NPZ without ground truth (a plain inference input)."""
    from ptychopinn.data.simulate import simulate_scan
    from ptychopinn.io.npz import scan_to_arrays, write_npz

    t0 = time.perf_counter()
    scan = simulate_scan(n=n, n_positions=n_patterns, photons_per_pattern=PHOTONS, seed=0)
    simulate_s = time.perf_counter() - t0
    arrays = {k: v for k, v in scan_to_arrays(scan).items() if k not in ("objectGuess", "Y")}
    path = work / f"scan_N{n}.npz"
    write_npz(path, arrays)
    info = {
        "N": n,
        "n_patterns": n_patterns,
        "object_shape": list(scan.object.shape),
        "photons_per_pattern": PHOTONS,
        "object_kind": scan.metadata.get("object_kind"),
        "scan_kind": scan.metadata.get("scan_kind"),
        "keys": sorted(arrays),
        "file_mb": path.stat().st_size / 1024**2,
        "simulate_s": simulate_s,
    }
    return path, info, scan


def save_untrained_bundle(n: int, preset: str, scan: Any, work: Path) -> Path:
    """A bundle holding a seeded, untrained network."""
    from ptychopinn.bundle import save_bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.models import build_network
    from ptychopinn.physics.functional import normalize_probe

    model = ModelConfig(N=n, **PRESETS[preset])
    torch.manual_seed(0)
    net = build_network(model)
    probe = normalize_probe(torch.from_numpy(scan.probe).to(torch.complex64))
    path = work / f"bundle_N{n}_{preset}.zip"
    save_bundle(path, Config(model=model), Normalization.from_scan(scan), net, probe)
    return path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_case(
    runner: Runner,
    n: int,
    preset: str,
    mode: dict[str, Any],
    scan_path: Path,
    n_patterns: int,
    bundle: Path,
) -> dict[str, Any]:
    """Every measurement ``mode`` asks for of one network at one N."""
    todo = mode["cases"][(n, preset)]
    spec = {
        "bundle": str(bundle),
        "scan": str(scan_path),
        "min_time_s": mode["min_time_s"],
        "variants": mode["variants"],
        "tag": f"N{n}_{preset}",
    }
    case: dict[str, Any] = {
        "N": n,
        "preset": preset,
        "model": dict(PRESETS[preset]),
        "load_average": _loadavg(),
    }
    tag = f"[N={n} {preset}]"
    log(f"{tag} predict-only")
    case["predict"] = runner.worker("predict", spec)
    if "error" in case["predict"]:
        return case
    case["parameters"] = case["predict"]["parameters"]
    case["forward_flops_per_pattern"] = case["predict"]["forward_flops_per_pattern"]
    if "stitch" in todo:
        log(f"{tag} predict + stitch: reconstruct() on {n_patterns} patterns")
        case["predict_stitch"] = runner.worker("stitch", spec)
    if "e2e" in todo:
        log(f"{tag} end-to-end: ptychopinn infer on {n_patterns} patterns")
        case["e2e"] = runner.e2e(bundle, scan_path)
    if "profile" in todo:
        log(f"{tag} end-to-end, profiled")
        case["e2e_profile"] = runner.e2e_profile(bundle, scan_path)
    train_spec = {**spec, "model": dict(PRESETS[preset]), "batch_size": 16}
    if "train" in todo:
        log(f"{tag} training steps")
        case["train"] = runner.worker("train", train_spec)
    if "train_epoch" in todo and mode["lightning_epoch_s"] and "error" not in case.get("train", {}):
        rate = case["train"]["patterns_per_s"]
        n_groups = int(min(n_patterns, max(64, mode["lightning_epoch_s"] * rate)))
        log(f"{tag} one Lightning epoch ({n_groups} groups)")
        case["train_epoch"] = runner.worker("train_epoch", {**train_spec, "n_groups": n_groups})
    return case


def add_efficiencies(case: dict[str, Any], matmul: dict[str, Any], device: str) -> None:
    """Achieved FLOP/s over the reference matmul rate, for every throughput of a case."""
    flops = case.get("forward_flops_per_pattern")
    if not flops:
        return
    fp32 = matmul["reference_float32_flops_per_s"]
    tf32 = matmul.get("tf32", {}).get("flops_per_s", fp32)  # GPU convolutions default to TF32
    bf16 = matmul.get("bfloat16", {}).get("flops_per_s")
    for name, v in case["predict"].get("variants", {}).items():
        if "flops_per_s" not in v:
            continue
        v["efficiency"] = v["flops_per_s"] / fp32
        same = bf16 if name.startswith("bf16") else tf32
        if same:
            v["efficiency_same_precision"] = v["flops_per_s"] / same
    for key in ("predict_stitch", "e2e"):
        part = case.get(key)
        if part and "patterns_per_s" in part:
            part["flops_per_s"] = flops * part["patterns_per_s"]
            part["efficiency"] = part["flops_per_s"] / fp32
            part["network_efficiency"] = flops * part["n_patterns"] / part["network_s"] / fp32
    train = case.get("train")
    if train and "flops_per_s" in train:
        train["efficiency"] = train["flops_per_s"] / fp32


# -- report ----------------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def summary_table(result: dict[str, Any]) -> str:
    cols = [
        ("N", 4),
        ("preset", 8),
        ("params", 10),
        ("GFLOP", 7),
        ("pred/s", 8),
        ("eff", 5),
        ("cl/s", 8),
        ("bf16/s", 8),
        ("bf16 dphi", 9),
        ("p+st/s", 8),
        ("e2e/s", 7),
        ("e2e s", 6),
        ("outnet", 6),
        ("st+io", 6),
        ("train/s", 8),
        ("bf16tr/s", 8),
        ("peakMB", 7),
    ]
    head = " ".join(f"{name:>{w}}" for name, w in cols)
    lines = [head, "-" * len(head)]
    for c in result["cases"]:
        var = c.get("predict", {}).get("variants", {})
        fp32, cl, bf = (var.get(k, {}) for k in ("float32", "channels_last", "bf16"))
        ps, e2e, prof, tr = (
            c.get(k, {}) for k in ("predict_stitch", "e2e", "e2e_profile", "train")
        )
        peaks = [
            part.get("process", {}).get("max_rss_mb") for part in (c.get("predict", {}), ps, tr)
        ] + [e2e.get("max_rss_mb")]
        peak = max((p for p in peaks if isinstance(p, (int, float))), default=None)
        gflop = c.get("forward_flops_per_pattern")
        values = [
            str(c["N"]),
            c["preset"],
            _fmt(c.get("parameters"), ",d"),
            _fmt(gflop / 1e9 if gflop else None, ".3f"),
            _fmt(fp32.get("patterns_per_s"), ".1f"),
            _fmt(fp32.get("efficiency_local"), ".0%"),
            _fmt(cl.get("patterns_per_s"), ".1f"),
            _fmt(bf.get("patterns_per_s"), ".1f"),
            _fmt(bf.get("max_abs_dev_phase_rad"), ".1e"),
            _fmt(ps.get("patterns_per_s"), ".1f"),
            _fmt(e2e.get("patterns_per_s"), ".1f"),
            _fmt(e2e.get("wall_s"), ".1f"),
            _fmt(e2e.get("outside_network_fraction"), ".0%"),
            _fmt(prof.get("stitch_and_io_fraction"), ".0%"),
            _fmt(tr.get("patterns_per_s"), ".1f"),
            _fmt(tr.get("bf16_patterns_per_s"), ".1f"),
            _fmt(peak, ".0f"),
        ]
        lines.append(" ".join(f"{v:>{w}}" for v, (_, w) in zip(values, cols, strict=True)))
    mm = result["matmul"]
    line = (
        f"reference matmul float32 {mm['float32']['size']}^2: "
        f"{mm['reference_float32_flops_per_s'] / 1e9:.1f} GFLOP/s"
    )
    if "bfloat16" in mm:
        line += f"; bf16 {mm['bfloat16']['flops_per_s'] / 1e9:.1f} GFLOP/s"
    lines.append(line)
    for c in result["cases"]:
        prof = c.get("e2e_profile", {})
        if "fractions" in prof:
            parts = ", ".join(
                f"{k} {v:.0%}" for k, v in prof["fractions"].items() if abs(v) >= 0.005
            )
            lines.append(f"e2e N={c['N']} {c['preset']} ({prof['wall_s']:.1f} s): {parts}")
    return "\n".join(lines)


def with_efficiencies(
    result: dict[str, Any], matmul: dict[str, Any], device: str
) -> dict[str, Any]:
    """A copy of ``result`` holding ``matmul`` and every case's efficiencies against it."""
    result = json.loads(json.dumps(result, default=str))  # deep copy
    result["matmul"] = matmul
    for case in result["cases"]:
        add_efficiencies(case, matmul, device)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/speed.json", help="JSON output path")
    parser.add_argument("--quick", action="store_true", help="fewer cases: < 3 min on 2 CPU cores")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in every process (default: torch's)",
    )
    parser.add_argument(
        "--keep", default=None, help="keep scans, bundles and outputs in this folder"
    )
    parser.add_argument(
        "--n_patterns",
        type=int,
        default=None,
        help="patterns per simulated scan at every N (default: the mode's, 1024 in full mode)",
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help="only these N (default: 64 and 128)"
    )
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    if args.sizes:
        mode["cases"] = {k: v for k, v in mode["cases"].items() if k[0] in args.sizes}
        if not mode["cases"]:
            parser.error(
                f"--sizes {args.sizes}: this mode measures N in {sorted(MODES[mode_name]['n_patterns'])}"
            )
    if args.n_patterns:
        mode["n_patterns"] = {n: args.n_patterns for n in mode["n_patterns"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "ptychopinn speed",
        "mode": mode_name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": describe_machine(device),
        "scans": {},
        "cases": [],
    }
    log(f"{result['machine']['cpu_model']}, device {device}: reference matmul")
    matmul = measure_matmul(device, mode["min_time_s"])
    with work_directory(args.keep) as work:
        runner = Runner(work, device, args.threads)
        result["startup"] = measure_startup(runner)
        for n in sorted({n for n, _ in mode["cases"]}):
            n_patterns = mode["n_patterns"][n]
            log(f"simulating N={n}: {n_patterns} patterns")
            scan_path, info, scan = prepare_scan(n, n_patterns, work)
            result["scans"][str(n)] = info
            for preset in (p for m, p in mode["cases"] if m == n):
                bundle = save_untrained_bundle(n, preset, scan, work)
                result["cases"].append(
                    run_case(runner, n, preset, mode, scan_path, n_patterns, bundle)
                )
                # rewritten after every case (efficiencies against the start's matmul), so a
                # run that is stopped keeps what it measured
                start_reference = matmul["float32"]["flops_per_s"]
                partial = with_efficiencies(
                    {**result, "partial": True},
                    {**matmul, "reference_float32_flops_per_s": start_reference},
                    device,
                )
                out.write_text(json.dumps(partial, indent=2))
    log("reference matmul again")
    matmul_end = measure_matmul(device, mode["min_time_s"])
    matmul.update({f"{k}_end": v for k, v in matmul_end.items()})
    matmul["reference_float32_flops_per_s"] = max(
        matmul["float32"]["flops_per_s"], matmul_end["float32"]["flops_per_s"]
    )
    matmul["note"] = "reference = the higher float32 rate of the start and the end of the run"
    result = with_efficiencies(result, matmul, device)
    result["machine"]["load_average_end"] = _loadavg()
    result["machine"]["orchestrator_max_rss_mb"] = peak_memory_mb(device)["max_rss_mb"]
    result["wall_s"] = time.perf_counter() - started
    out.write_text(json.dumps(result, indent=2, default=str))
    print(summary_table(result))
    print(f"wrote {out} in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
