"""ptychopinn against the iterative solver pty-chi on the same simulated scan (JSON out).

For each object class and dose, on one machine and with the same number of torch threads:

1. simulates a scan (N = 64, known probe, known positions) with
   :func:`ptychopinn.data.simulate.simulate_scan` and checks that pty-chi's forward model,
   given the true object, reproduces the simulated intensities (``forward_check``);
2. trains ptychopinn's default recipe (the physics-informed U-Net, overlap-constrained)
   self-supervised on that scan (``training_s``, a one-off cost per instrument and sample
   type), then times ``python -m ptychopinn.cli infer`` end to end as a fresh process and
   scores its output against the ground truth (the evaluation of docs/physics.md: scanned region, sub-pixel
   registration, global phase and phase ramp removed);
3. runs ptychopinn's likelihood refinement (:func:`ptychopinn.refinement.refine`) from the
   network's reconstruction and from a flat object, scoring after every pass;
4. runs pty-chi's ePIE and LSQML with the probe and positions fixed at their true values from
   a flat object (amplitude 1, phase 0), one epoch at a time, scoring after every epoch.

Every curve is phase SSIM against wall time; the time spent scoring is excluded from the
clock. pty-chi's clock starts before its ``PtychographyTask`` is built (its setup counts),
refinement's before :func:`refine` is called; the network + refinement curve starts at the end
of the ``ptychopinn infer`` process (interpreter start, imports and writing the outputs
included), so it is the conservative clock for ptychopinn.

Usage::

    python benchmarks/iterative.py --out benchmarks/results/iterative.json
    python benchmarks/iterative.py --quick --out /tmp/iterative.json     # a few minutes

Needs ``ptychi`` (``pip install -e '.[bench]'``; with a CPU-only torch, ``pip install --no-deps
ptychi==2.2.0 pandas``, see benchmarks/README.md). pty-chi imports torchvision for one helper
that this benchmark never calls; where torchvision cannot be imported a stand-in module is
registered while pty-chi is imported, and ``machine.torchvision`` says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

# run.py sits next to this script (the script's directory is on sys.path)
from run import _loadavg  # noqa: E402
from run import describe_machine as describe_speed_machine  # noqa: E402

import ptychopinn
from ptychopinn import workflows as pp
from ptychopinn.config import Config, ModelConfig, TrainingConfig
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.io.npz import scan_to_arrays, write_npz
from ptychopinn.io.scan import ScanData
from ptychopinn.physics.functional import extract_patches, far_field_amplitude
from ptychopinn.reconstruction import Reconstruction
from ptychopinn.refinement import RefineOptions, refine

N = 64
KEYS = ("phase_ssim", "amplitude_ssim", "phase_mae", "amplitude_mae", "frc50_rings")
ALGORITHMS = ("epie", "lsqml")
#: Upper bound on refinement passes and pty-chi epochs; the time budget stops them first.
MAX_STEPS = 100_000


class _BudgetSpentError(Exception):
    """Raised from the refinement callback once the time budget is spent."""


# -- machine -------------------------------------------------------------------------------
def describe_machine(device: str, ptychi_info: dict[str, Any]) -> dict[str, Any]:
    """The speed benchmark's machine description plus what pty-chi brought in."""
    return {**describe_speed_machine(device), **ptychi_info}


# -- pty-chi ----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def import_ptychi() -> tuple[Any, Any, dict[str, Any]]:
    """pty-chi's ``api`` module and ``PtychographyTask``, and what was installed.

    ``ptychi.utils`` imports ``torchvision.transforms.GaussianBlur`` at module level and uses
    it only to generate random initial images, which this benchmark never asks for. Where
    torchvision cannot be imported, a stand-in whose ``GaussianBlur`` raises is registered
    while pty-chi is imported and removed afterwards (so that Lightning and torchmetrics still
    see no torchvision).
    """
    from importlib.metadata import version

    info: dict[str, Any] = {}
    stand_ins: dict[str, types.ModuleType] = {}
    try:
        import torchvision.transforms  # noqa: F401

        info["torchvision"] = torchvision.__version__
    except Exception as error:  # ImportError, or RuntimeError from a mismatched build
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        stand_in = types.ModuleType("torchvision")
        transforms = types.ModuleType("torchvision.transforms")

        class GaussianBlur:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                raise NotImplementedError("torchvision stand-in: GaussianBlur is unavailable")

        transforms.GaussianBlur = GaussianBlur  # type: ignore[attr-defined]
        stand_in.transforms = transforms  # type: ignore[attr-defined]
        stand_ins = {"torchvision": stand_in, "torchvision.transforms": transforms}
        info["torchvision"] = f"stand-in ({type(error).__name__}: {str(error)[:120]})"
    sys.modules.update(stand_ins)
    try:
        import ptychi.api as api
        from ptychi.api.task import PtychographyTask
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)
    info["ptychi"] = version("ptychi")
    return api, PtychographyTask, info


def ptychi_inputs(scan: ScanData) -> dict[str, np.ndarray]:
    """The scan in pty-chi's conventions.

    pty-chi's patch pixel i of a pattern at position p (origin at ``round(H / 2) - 0.5``) is
    object pixel ``p + round(H / 2) - 0.5 - (N - 1) / 2 + i``; ptychopinn's at position q is
    ``q - N // 2 + i``, so ``p = q - round(H / 2)`` (per axis). Its far field is an
    unnormalised FFT with the zero frequency at the corner: the probe is divided by N and the
    data are given centred (pty-chi shifts them).
    """
    h, w = scan.object.shape
    positions = scan.positions_px - np.round(np.array([h / 2, w / 2]))  # (M, 2) (y, x)
    return {
        "diffraction_data": scan.diffraction.astype(np.float32),  # (M, N, N) counts
        "object_data": np.ones((1, h, w), dtype=np.complex64),  # flat start
        "probe_data": (scan.probe / scan.N)[None].astype(np.complex64),  # (1, P, N, N)
        "probe_position_x_px": positions[:, 1],
        "probe_position_y_px": positions[:, 0],
    }


def ptychi_options(api: Any, algorithm: str, args: argparse.Namespace, device: str) -> Any:
    if algorithm == "epie":
        options = api.EPIEOptions()
        options.object_options.alpha = args.epie_alpha
    else:
        options = api.LSQMLOptions()
        options.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
        options.reconstructor_options.rescale_probe_intensity_in_first_epoch = False
    options.object_options.optimizable = True
    # the probe is known: no rescaling of object and probe against each other
    options.object_options.remove_object_probe_ambiguity.enabled = False
    options.probe_options.optimizable = False
    options.probe_position_options.optimizable = False
    r = options.reconstructor_options
    r.batch_size = args.ptychi_batch_size
    r.num_epochs = MAX_STEPS
    r.random_seed = 0
    r.displayed_loss_function = None  # no per-batch loss evaluation
    r.default_device = api.Devices.GPU if device == "cuda" else api.Devices.CPU
    options.data_options.save_data_on_device = device == "cuda"
    return options


def forward_check(scan: ScanData, n_patterns: int = 64) -> dict[str, Any]:
    """pty-chi's forward model on the true object against the noise-free simulated intensities."""
    api, task_class, _ = import_ptychi()
    m = min(n_patterns, scan.n_patterns)
    inputs = ptychi_inputs(scan)
    inputs["object_data"] = scan.object[None].astype(np.complex64)
    default_device = torch.get_default_device()
    try:
        options = api.EPIEOptions()
        options.reconstructor_options.default_device = api.Devices.CPU
        options.object_options.remove_object_probe_ambiguity.enabled = False
        task = task_class(options, **inputs)
        with torch.no_grad():
            predicted = task.reconstructor.forward_model.forward(torch.arange(m)).cpu().numpy()
            patches = extract_patches(
                torch.from_numpy(scan.object)[None],
                torch.from_numpy(scan.positions_px[:m])[None],
                N,
            )[0]  # (m, N, N)
            amplitude = far_field_amplitude(torch.from_numpy(scan.probe), patches).numpy()
    finally:
        torch.set_default_device(default_device)
    expected = np.fft.ifftshift(amplitude.astype(np.float64) ** 2, axes=(-2, -1))  # corner DC
    residual = np.abs(predicted - expected).sum() / expected.sum()
    fractional = np.abs(scan.positions_px - np.round(scan.positions_px)).max()
    return {
        "patterns": m,
        "relative_l1_error": float(residual),
        "max_fractional_position_px": float(fractional),
    }


def ptychi_curve(
    algorithm: str, scan: ScanData, args: argparse.Namespace, device: str
) -> dict[str, Any]:
    """One pty-chi reconstruction from a flat object, scored after every epoch."""
    api, task_class, _ = import_ptychi()
    options = ptychi_options(api, algorithm, args, device)
    default_device = torch.get_default_device()
    points: list[dict[str, Any]] = []
    load = _loadavg()
    try:
        t0 = time.perf_counter()
        task = task_class(options, **ptychi_inputs(scan))
        setup_s = time.perf_counter() - t0
        elapsed = setup_s
        epoch = 0
        while elapsed < args.budget_s and epoch < MAX_STEPS:
            t0 = time.perf_counter()
            task.run(1)
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
            epoch += 1
            obj = task.get_data_to_cpu("object", as_numpy=True)[0]  # (H, W)
            points.append(
                {"epoch": epoch, "t_s": elapsed, **score(on_object_grid(obj, scan), scan)}
            )
    finally:
        torch.set_default_device(default_device)
    return {
        "algorithm": algorithm,
        "batch_size": args.ptychi_batch_size,
        "setup_s": setup_s,
        "load_average": [load, _loadavg()],
        "curve": points,
    }


# -- ptychopinn -------------------------------------------------------------------------------
def score(rec: Reconstruction, scan: ScanData) -> dict[str, Any]:
    metrics = pp.evaluate_reconstruction(rec, scan.object).metrics.to_dict()
    return {k: metrics[k] for k in KEYS}


def on_object_grid(obj: np.ndarray, scan: ScanData) -> Reconstruction:
    """An object array on the ground truth's pixel grid as a :class:`Reconstruction`."""
    return Reconstruction(
        object=obj.astype(np.complex64),
        origin_px=(0, 0),
        coverage=np.ones(obj.shape, dtype=np.float32),
        positions_px=scan.positions_px,
        N=scan.N,
    )


def train_network(
    scan: ScanData, args: argparse.Namespace, device: str, run_dir: Path
) -> dict[str, Any]:
    config = Config(
        model=ModelConfig(N=N),  # the default recipe
        training=TrainingConfig(
            max_epochs=args.epochs,
            logger="none",
            accelerator="gpu" if device == "cuda" else "cpu",
        ),
    )
    load = _loadavg()
    t0 = time.perf_counter()
    run = pp.train(config, scan, run_dir, progress=False)
    return {
        "bundle_path": str(run.bundle_path),
        "epochs": args.epochs,
        "training_s": run.metrics.get("training_s"),
        "wall_s": time.perf_counter() - t0,
        "load_average": [load, _loadavg()],
    }


def child_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    src = str(Path(ptychopinn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def infer_e2e(
    bundle: Path, scan: ScanData, work: Path, device: str, threads: int | None
) -> tuple[dict[str, Any], Reconstruction]:
    """``python -m ptychopinn.cli infer`` on the scan written without ground truth."""
    scan_path, out = work / "scan.npz", work / "infer"
    arrays = {k: v for k, v in scan_to_arrays(scan).items() if k not in ("objectGuess", "Y")}
    write_npz(scan_path, arrays)
    cmd = [
        *(sys.executable, "-m", "ptychopinn.cli", "infer", "--model_path", str(bundle)),
        *("--test_data", str(scan_path), "--output_dir", str(out)),
        *("--accelerator", "gpu" if device == "cuda" else "cpu", "--quiet"),
    ]
    load = _loadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"ptychopinn infer failed:\n{proc.stderr[-3000:]}")
    with np.load(out / "reconstruction.npz", allow_pickle=False) as npz:
        rec = Reconstruction(
            object=npz["object"],
            origin_px=(int(npz["origin_px"][0]), int(npz["origin_px"][1])),
            coverage=npz["coverage"],
            positions_px=npz["positions_px"],
            metadata=json.loads(str(npz["metadata"])),
        )
    result = {
        "wall_s": wall,
        "network_s": rec.metadata.get("network_s"),
        "reconstruct_s": rec.metadata.get("elapsed_s"),
        "load_average": [load, _loadavg()],
        **score(rec, scan),
    }
    return result, rec


def refine_curve(
    bundle: Any,
    scan: ScanData,
    start: Reconstruction | None,
    args: argparse.Namespace,
    device: str,
) -> dict[str, Any]:
    """Likelihood refinement until the budget is spent, scored after every pass."""
    points: list[dict[str, Any]] = []
    clock = {"t0": 0.0, "excluded": 0.0}

    def on_pass(index: int, rec: Reconstruction) -> None:
        entered = time.perf_counter()
        t = entered - clock["t0"] - clock["excluded"]
        points.append({"pass": index + 1, "t_s": t, **score(rec, scan)})
        clock["excluded"] += time.perf_counter() - entered
        if t >= args.budget_s:
            raise _BudgetSpentError

    normalization = bundle.normalization.for_scan(scan)
    # A curve against a time budget needs a step that does not depend on the number of
    # passes: the fixed step 0.05 these results were measured with. The package default
    # (step 0.1, cosine-annealed over the second half of a pass count fixed in advance) is
    # measured at fixed pass counts instead (README, Results).
    options = RefineOptions(n_iter=MAX_STEPS, object_lr=0.05, schedule="constant", coarse_factor=0)
    load = _loadavg()
    clock["t0"] = time.perf_counter()
    with contextlib.suppress(_BudgetSpentError):
        refine(scan, bundle.probe, normalization, start, options, device, on_pass)
    return {
        "start": "flat" if start is None else "network",
        "options": {
            "batch_size": options.batch_size,
            "object_lr": options.object_lr,
            "probe_lr": options.probe_lr,
        },
        "load_average": [load, _loadavg()],
        "curve": points,
    }


def refine_fixed(
    bundle: Any,
    scan: ScanData,
    start: Reconstruction | None,
    pass_counts: list[int],
    device: str,
) -> list[dict[str, Any]]:
    """The package's default refinement (annealed step) run to each of ``pass_counts``.

    Its schedule depends on the number of passes fixed in advance, so each count is a
    separate run from the same start, timed from the call of :func:`refine` to its return.
    """
    normalization = bundle.normalization.for_scan(scan)
    points = []
    for count in pass_counts:
        options = RefineOptions(n_iter=count)
        t0 = time.perf_counter()
        rec, _, _ = refine(scan, bundle.probe, normalization, start, options, device)  # on host
        points.append({"pass": count, "t_s": time.perf_counter() - t0, **score(rec, scan)})
    return points


# -- summary ----------------------------------------------------------------------------------
def time_to_reach(
    curve: list[dict[str, Any]], target: float, offset_s: float = 0.0
) -> float | None:
    """First time (plus ``offset_s``) at which the phase SSIM reaches ``target``."""
    for point in curve:
        if point["phase_ssim"] >= target:
            return point["t_s"] + offset_s
    return None


def value_at(curve: list[dict[str, Any]], t_s: float, offset_s: float = 0.0) -> float | None:
    """Phase SSIM of the last point scored at or before ``t_s`` (None before the first)."""
    value = None
    for point in curve:
        if point["t_s"] + offset_s <= t_s + 1e-9:
            value = point["phase_ssim"]
    return value


def best(curve: list[dict[str, Any]], offset_s: float = 0.0) -> dict[str, Any] | None:
    if not curve:
        return None
    point = max(curve, key=lambda p: p["phase_ssim"])
    return {"phase_ssim": point["phase_ssim"], "t_s": point["t_s"] + offset_s}


def summarise(case: dict[str, Any]) -> dict[str, Any]:
    infer = case["ptychopinn_infer"]
    network_ssim, infer_s = infer["phase_ssim"], infer["wall_s"]
    from_network = case["refine_from_network"]["curve"]
    from_flat = case["refine_from_flat"]["curve"]
    summary: dict[str, Any] = {
        "network_phase_ssim": network_ssim,
        "infer_e2e_s": infer_s,
        "training_s": case["training"]["training_s"],
        "network_refined_best": best(from_network, infer_s),
        "flat_refined_best": best(from_flat),
        "flat_refined_time_to_network_ssim_s": time_to_reach(from_flat, network_ssim),
        "ptychi": {},
    }
    fixed = case.get("refine_default_schedule", {})
    if fixed:
        summary["default_schedule"] = [
            {
                "passes": net["pass"],
                "network_refined_phase_ssim": net["phase_ssim"],
                "network_refined_t_s": net["t_s"] + infer_s,
                "flat_refined_phase_ssim": flat["phase_ssim"],
                "flat_refined_t_s": flat["t_s"],
                "ptychi_at_network_refined_t": {
                    algorithm: value_at(run["curve"], net["t_s"] + infer_s)
                    for algorithm, run in case["ptychi"].items()
                },
            }
            for net, flat in zip(fixed["network"], fixed["flat"], strict=True)
        ]
    for algorithm, run in case["ptychi"].items():
        curve = run["curve"]
        reach = time_to_reach(curve, network_ssim)
        top = best(curve)
        entry: dict[str, Any] = {
            "time_to_network_ssim_s": reach,
            "ratio_to_infer": None if reach is None else reach / infer_s,
            "best": top,
            "epochs": len(curve),
        }
        if top is not None:
            t = top["t_s"]
            at_network = value_at(from_network, t, infer_s)
            at_flat = value_at(from_flat, t)
            entry["at_best_time"] = {
                "network_refined_phase_ssim": at_network,
                "flat_refined_phase_ssim": at_flat,
                "network_refined_at_least_as_good": (
                    None if at_network is None else at_network >= top["phase_ssim"]
                ),
            }
        summary["ptychi"][algorithm] = entry
    return summary


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def table(cases: list[dict[str, Any]]) -> str:
    rows = [
        "| object | photons | network SSIM | infer e2e s | train s | solver | t to network SSIM s "
        "| ratio | solver best SSIM @ s | net+refine @ that t | flat refine @ that t |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        s = case["summary"]
        for algorithm, e in s["ptychi"].items():
            top, at = e["best"] or {}, e.get("at_best_time", {})
            reach = e["time_to_network_ssim_s"]
            rows.append(
                f"| {case['object']} | {case['photons']:g} | {_f(s['network_phase_ssim'])} "
                f"| {_f(s['infer_e2e_s'], '.1f')} | {_f(s['training_s'], '.0f')} | {algorithm} "
                f"| {'never' if reach is None else _f(reach, '.1f')} "
                f"| {_f(e['ratio_to_infer'], '.1f')} "
                f"| {_f(top.get('phase_ssim'))} @ {_f(top.get('t_s'), '.1f')} "
                f"| {_f(at.get('network_refined_phase_ssim'))} "
                f"| {_f(at.get('flat_refined_phase_ssim'))} |"
            )
    return "\n".join(rows)


# -- main ---------------------------------------------------------------------------------------
def one_case(
    args: argparse.Namespace, obj: str, photons: float, device: str, work: Path
) -> dict[str, Any]:
    def log(message: str) -> None:
        print(f"[{obj} {photons:g}] {message} (load {_loadavg()})", file=sys.stderr, flush=True)

    scan = simulate_scan(
        n=N,
        object_kind=obj,  # type: ignore[arg-type]
        n_positions=args.n_positions,
        photons_per_pattern=photons,
        step_px=args.step_px,
        jitter_px=args.jitter_px,
        seed=0,
    )
    case: dict[str, Any] = {
        "object": obj,
        "photons": photons,
        "scan": {
            "n_patterns": scan.n_patterns,
            "object_shape": list(scan.object.shape),
            "step_px": args.step_px,
            "jitter_px": args.jitter_px,
        },
        "forward_check": forward_check(scan),
    }
    log(f"forward check {case['forward_check']}")
    case["training"] = train_network(scan, args, device, work / "run")
    log(f"trained in {case['training']['training_s']:.1f} s")
    bundle_path = Path(case["training"]["bundle_path"])
    case["ptychopinn_infer"], rec = infer_e2e(bundle_path, scan, work, device, args.threads)
    log(f"infer {case['ptychopinn_infer']['wall_s']:.1f} s, phase SSIM "
        f"{case['ptychopinn_infer']['phase_ssim']:.3f}")  # fmt: skip
    bundle = pp.load_bundle(bundle_path, map_location=device)
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("refine_from_network", lambda: refine_curve(bundle, scan, rec, args, device)),
        ("refine_from_flat", lambda: refine_curve(bundle, scan, None, args, device)),
    ]
    for key, run in runs:
        case[key] = run()
        log(f"{key}: {len(case[key]['curve'])} passes, best {best(case[key]['curve'])}")
    if args.pass_counts:
        case["refine_default_schedule"] = {
            name: refine_fixed(bundle, scan, start, args.pass_counts, device)
            for name, start in (("network", rec), ("flat", None))
        }
        for name, points in case["refine_default_schedule"].items():
            log(f"default schedule from {name}: " + ", ".join(
                f"{p['pass']} passes {p['phase_ssim']:.3f} in {p['t_s']:.1f} s" for p in points
            ))  # fmt: skip
    case["ptychi"] = {}
    for algorithm in args.algorithms:
        case["ptychi"][algorithm] = ptychi_curve(algorithm, scan, args, device)
        curve = case["ptychi"][algorithm]["curve"]
        log(f"pty-chi {algorithm}: {len(curve)} epochs, best {best(curve)}")
    case["summary"] = summarise(case)
    return case


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="benchmarks/results/iterative.json")
    p.add_argument("--quick", action="store_true", help="256 patterns, 5 epochs, 20 s budgets")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--photons", default="1e9,1e4", help="photons per pattern, comma-separated")
    p.add_argument("--objects", default="image", help="lines, grf, image; comma-separated")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (30; quick 5)")
    p.add_argument("--n-positions", type=int, default=None, help="patterns (576; quick 256)")
    p.add_argument(
        "--budget-s", type=float, default=None, help="seconds per refinement or solver (90; 20)"
    )
    p.add_argument("--step-px", type=float, default=6.0, help="raster step (pixels)")
    p.add_argument(
        "--jitter-px",
        type=float,
        default=0.0,
        help="position jitter; 0 keeps positions on whole pixels, where the two codes' "
        "forward models agree exactly (they interpolate sub-pixel shifts differently)",
    )
    p.add_argument("--algorithms", default="epie,lsqml", help="pty-chi algorithms")
    p.add_argument(
        "--ptychi-batch-size", type=int, default=None, help="patterns per update (64; quick 32)"
    )
    p.add_argument("--epie-alpha", type=float, default=1.0, help="ePIE object step")
    p.add_argument(
        "--pass-counts",
        default="10,25,50,100",
        help="pass counts of the default (annealed) refinement, each run separately; '' for none",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.epochs = args.epochs or (5 if quick else 30)
    args.n_positions = args.n_positions or (256 if quick else 576)
    args.budget_s = args.budget_s or (20.0 if quick else 90.0)
    args.ptychi_batch_size = args.ptychi_batch_size or (32 if quick else 64)
    args.photons = [float(v) for v in args.photons.split(",")]
    args.objects = args.objects.split(",")
    args.algorithms = args.algorithms.split(",")
    args.pass_counts = [int(v) for v in args.pass_counts.split(",") if v.strip()]
    unknown = set(args.algorithms) - set(ALGORITHMS)
    if unknown:
        p.error(f"--algorithms: unknown {sorted(unknown)}; expected some of {ALGORITHMS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # pty-chi converts a tensor that requires grad to a scalar once per task; harmless
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = args.device
    try:
        _, _, ptychi_info = import_ptychi()
    except Exception as error:
        print(f"pty-chi cannot be imported: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    machine = describe_machine(device, ptychi_info)
    t0 = time.perf_counter()
    cases: list[dict[str, Any]] = []
    report = {"machine": machine, "settings": vars(args), "cases": cases}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for obj in args.objects:
        for photons in args.photons:
            with tempfile.TemporaryDirectory(prefix="ptychopinn-iterative-") as tmp:
                cases.append(one_case(args, obj, photons, device, Path(tmp)))
            # rewritten after every case, so a run that is stopped keeps what it measured
            Path(args.out).write_text(json.dumps(report, indent=2))
    machine["load_average_end"] = _loadavg()
    report["wall_s"] = time.perf_counter() - t0
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(table(cases))
    print(f"wrote {args.out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
