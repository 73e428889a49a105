"""The train -> bundle -> fresh-process load -> infer cycle, through the real CLIs.

Small settings (N = 32, 144 patterns) keep this to a few minutes on 2 CPU cores: the seed
commands run the default recipe for its 20 epochs; the tests of the machinery (DDP, bf16,
gridsize 2) train the fast recipe or one short epoch. The full settings live in benchmarks/.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

#: The quick recipe for tests that exercise the machinery rather than the quality.
FAST = ["--preset", "fast", "--groups_per_epoch", "256"]

#: The seed training command of the issue tracker, verbatim.
SEED_TRAIN = [
    "--train_data_file", "D.npz", "--test_data_file", "D.npz", "--output_dir", "RUN",
    "--max_epochs", "20", "--n_images", "256", "--gridsize", "1", "--batch_size", "16",
    "--accelerator", "cpu", "--deterministic", "--num-workers", "0", "--learning-rate", "1e-3",
    "--disable_mlflow",
]  # fmt: skip
SEED_INFER = [
    "--model_path", "RUN", "--test_data", "D.npz", "--output_dir", "OUT", "--n_images", "1024",
    "--accelerator", "cpu",
]  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory, run_cli) -> Path:
    d = tmp_path_factory.mktemp("cycle")
    ok(run_cli("simulate", "--output", "D.npz", "--N", "32", "--n_positions", "144", "--object",
           "lines", "--photons", "1e6", "--seed", "0", cwd=d))  # fmt: skip
    return d


@pytest.fixture(scope="module")
def trained(work, run_cli) -> Path:
    """The seed training command, verbatim: the default recipe (20 epochs on 144 patterns)."""
    ok(run_cli(*SEED_TRAIN, cwd=work, module="ptycho_torch.train"))
    return work / "RUN"


def _metrics(path: Path) -> dict:
    return json.loads(path.read_text())


def test_seed_commands_verbatim_reconstruct_the_object(work, trained, run_cli):
    """The seed commands as users have them: the default recipe and the default inference.

    On this scan (random lines, N = 32, 144 patterns, 10^6 photons) the network alone reaches
    phase SSIM 0.8 (the recipe these commands ran before, a single-pattern network with a
    constant learning rate, left patch edges and no lines: 0.1) and the refined output 0.9.
    """
    assert (trained / "wts.h5.zip").is_file()
    assert (trained / "checkpoints" / "last.ckpt").is_file()
    assert list((trained / "checkpoints").glob("best-*.ckpt"))
    assert not (trained / "mlruns").exists()  # --disable_mlflow: no logger at all
    ok(run_cli(*SEED_INFER, cwd=work, module="ptycho_torch.inference"))
    out = work / "OUT"
    for name in ("reconstructed_amplitude.png", "reconstructed_phase.png", "reconstruction.npz"):
        assert (out / name).is_file() and (out / "network" / name).is_file(), name
    with np.load(out / "reconstruction.npz") as rec:
        assert rec["object"].dtype == np.complex64
        assert rec["positions_px"].shape == (144, 2)
        assert np.all(np.isfinite(rec["object"]))
        refinement = json.loads(str(rec["refinement"]))
    assert refinement["requested"] == "auto" and refinement["passes"] > 0
    metrics = _metrics(out / "metrics.json")
    network = metrics["network_only"]
    assert network["phase_ssim"] >= 0.7, network
    assert metrics["phase_ssim"] >= max(0.85, network["phase_ssim"]), metrics
    manifest = (
        __import__("ptychopinn.bundle", fromlist=["load_bundle"]).load_bundle(trained).manifest
    )
    assert manifest["run"]["recipe"].startswith("overlap")


def test_trained_model_beats_untrained_on_ground_truth(work, trained, run_cli):
    """The network alone, in a fresh process from the bundle only, against an untrained
    network of the same config (which predicts nearly one patch everywhere)."""
    from ptychopinn.bundle import load_bundle, save_bundle
    from ptychopinn.models import build_network

    bundle = load_bundle(trained / "wts.h5.zip")
    torch.manual_seed(0)
    fresh = build_network(bundle.config.model)
    save_bundle(work / "untrained.zip", bundle.config, bundle.normalization, fresh, bundle.probe)
    scores = {}
    for name, model in (("trained", "RUN"), ("untrained", "untrained.zip")):
        ok(run_cli("infer", "--model_path", model, "--data", "D.npz", "--output_dir", f"NET_{name}",
               "--refine", "0", cwd=work))  # fmt: skip
        scores[name] = _metrics(work / f"NET_{name}" / "metrics.json")
    trained_m, untrained_m = scores["trained"], scores["untrained"]
    assert trained_m["phase_ssim"] > untrained_m["phase_ssim"] + 0.4, scores
    assert trained_m["amplitude_ssim"] > untrained_m["amplitude_ssim"] + 0.1, scores
    assert trained_m["frc50_rings"] > untrained_m["frc50_rings"], scores


def test_default_inference_is_never_worse_than_the_network_at_low_dose(work, trained, run_cli):
    """The same object scanned with 10^4 photons: refinement could fit the noise; the default
    (held-out stopping) keeps the network's answer or improves on it."""
    ok(run_cli("simulate", "--output", "D4.npz", "--N", "32", "--n_positions", "144", "--object",
           "lines", "--photons", "1e4", "--seed", "0", cwd=work))  # fmt: skip
    ok(run_cli("infer", "--model_path", "RUN", "--data", "D4.npz", "--output_dir", "LOW", cwd=work))
    metrics = _metrics(work / "LOW" / "metrics.json")
    assert metrics["phase_ssim"] >= metrics["network_only"]["phase_ssim"] - 1e-6, metrics
    assert metrics["refinement"]["requested"] == "auto"


def test_training_logs_and_checkpoints(reference_run):
    logs = list(reference_run.glob("lightning_logs/*/metrics.csv"))
    assert logs
    with logs[0].open() as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    assert len(losses) == 12
    assert losses[-1] < losses[0]
    assert any(r.get("patterns_per_s") for r in rows)
    r_factors = [float(r["val_r_factor"]) for r in rows if r.get("val_r_factor")]
    assert len(r_factors) == 12 and 0 < r_factors[-1] < r_factors[0] < 2  # the fit improves
    assert (reference_run / "checkpoints" / "last.ckpt").is_file()
    from PIL import Image

    with Image.open(reference_run / "training.png") as png:  # the convergence plot
        assert png.size[0] > 400 and png.size[1] > 200


def test_resume_continues_from_checkpoint(work, trained, run_cli):
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 19
    ok(run_cli("train", "--train_data", "D.npz", "--output_dir", "RUN", "--max_epochs", "21",
           "--n_images", "256", "--resume", cwd=work))  # fmt: skip
    resumed = torch.load(
        trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    steps_per_epoch = ckpt["global_step"] // 20
    assert resumed["global_step"] == ckpt["global_step"] + steps_per_epoch  # epoch 20 only


def test_existing_run_is_not_overwritten(work, trained, run_cli):
    before = (trained / "wts.h5.zip").stat().st_mtime_ns
    result = run_cli(
        "train", "--train_data_file", "D.npz", "--output_dir", "RUN", "--max_epochs", "1", cwd=work
    )
    assert result.returncode == 2
    assert "--overwrite" in result.stderr
    assert (trained / "wts.h5.zip").stat().st_mtime_ns == before


def test_wrong_gridsize_or_n_is_a_clear_error(work, trained, run_cli):
    result = run_cli(
        "infer",
        "--model_path",
        "RUN",
        "--test_data",
        "D.npz",
        "--output_dir",
        "G2",
        "--gridsize",
        "2",
        cwd=work,
    )
    assert result.returncode == 2
    assert "gridsize = 1; the request has gridsize = 2" in result.stderr
    assert "Traceback" not in result.stderr
    ok(run_cli("simulate", "--output", "D64.npz", "--N", "64", "--n_images", "16", cwd=work))
    result = run_cli(
        "infer", "--model_path", "RUN", "--test_data", "D64.npz", "--output_dir", "N64", cwd=work
    )
    assert result.returncode == 2
    assert "N = 32" in result.stderr and "N = 64" in result.stderr
    assert not (work / "N64" / "reconstruction.npz").exists()


@pytest.mark.parametrize("overlap", ["3", "1"], ids=["overlap_groups", "upstream"])
def test_gridsize2_end_to_end(work, overlap, run_cli):
    """A channel model (gridsize 2: four neighbours as channels), in overlap groups of nine
    inputs or (upstream) alone, through the seed commands."""
    name = f"G2O{overlap}"
    ok(run_cli("--train_data_file", "D.npz", "--output_dir", f"{name}RUN", "--max_epochs", "1",
           "--gridsize", "2", "--overlap_grid", overlap, "--groups_per_epoch", "16",
           "--accelerator", "cpu", "--disable_mlflow", cwd=work, module="ptycho_torch.train"))  # fmt: skip
    ok(run_cli("--model_path", f"{name}RUN", "--test_data", "D.npz", "--output_dir", f"{name}OUT",
           "--accelerator", "cpu", "--refine", "0", cwd=work, module="ptycho_torch.inference"))  # fmt: skip
    from ptychopinn.bundle import load_bundle

    m = load_bundle(work / f"{name}RUN").config.model
    assert (m.gridsize, m.C, m.overlap_grid) == (2, 4, int(overlap))
    with np.load(work / f"{name}OUT" / "reconstruction.npz") as rec:
        assert np.all(np.isfinite(rec["object"]))
        assert rec["positions_px"].shape[0] == 144
        meta = json.loads(str(rec["metadata"]))
    # a channel model is stitched both ways, the likelier kept
    nll = meta["phase_nll"]
    assert set(nll) == {"network", "synchronised"}
    assert meta["phases"] == min(nll, key=nll.__getitem__)
    ok(run_cli("infer", "--model_path", f"{name}RUN", "--data", "D.npz", "--output_dir",
           f"{name}ON", "--phase_sync", "on", "--refine", "0", cwd=work))  # fmt: skip
    with np.load(work / f"{name}ON" / "reconstruction.npz") as rec:
        meta = json.loads(str(rec["metadata"]))
    assert meta["phases"] == "synchronised" and meta["phase_nll"] is None


def test_default_recipe_trains_in_bfloat16_end_to_end(work, run_cli):
    """The default recipe from the command line in bf16-mixed precision (what ``auto`` picks
    on CPUs with native bfloat16; emulated and slower elsewhere, still correct)."""
    ok(run_cli("train", "--train_data", "D.npz", "--output_dir", "BF16RUN", "--max_epochs", "1",
           "--groups_per_epoch", "16", "--precision", "bf16-mixed", "--logger", "none",
           cwd=work))  # fmt: skip
    ok(run_cli("infer", "--model_path", "BF16RUN", "--data", "D.npz", "--output_dir", "BF16OUT",
           "--refine", "0", cwd=work))  # fmt: skip
    from ptychopinn.bundle import load_bundle

    bundle = load_bundle(work / "BF16RUN")
    m, t = bundle.config.model, bundle.config.training
    assert (m.gridsize, m.overlap_grid, m.overlap_stride, m.norm_layer) == (1, 3, 2, "layer")
    assert (t.precision, bundle.manifest["run"]["precision"]) == ("bf16-mixed", "bf16-mixed")
    with np.load(work / "BF16OUT" / "reconstruction.npz") as rec:
        assert np.all(np.isfinite(rec["object"])) and rec["object"].dtype == np.complex64
        assert json.loads(str(rec["metadata"]))["phases"] == "synchronised"
        assert not bool(rec["collapsed"])


@pytest.fixture(scope="module")
def reference_run(work, run_cli) -> Path:
    """A single-process run of the fast recipe (12 epochs, batch 16, CSV logs)."""
    ok(run_cli("train", "--train_data", "D.npz", "--output_dir", "REF", "--max_epochs", "12",
               *FAST, "--seed", "0", cwd=work))  # fmt: skip
    return work / "REF"


@pytest.fixture(scope="module")
def reference_metrics(work, reference_run, run_cli) -> dict:
    """The network alone of the reference run: the yardstick for DDP and bf16 inference."""
    ok(run_cli("infer", "--model_path", "REF", "--data", "D.npz", "--output_dir", "REF_OUT",
               "--refine", "0", cwd=work))  # fmt: skip
    return _metrics(work / "REF_OUT" / "metrics.json")


@pytest.mark.parametrize("strategy", ["ddp", "ddp_spawn"])
def test_distributed_training_matches_single_process(work, reference_metrics, strategy, run_cli):
    """Lightning DDP (gloo) with 2 CPU processes x batch 8 = the single run's global batch 16.

    One bundle, one log, written by rank 0; the bundle reconstructs as well as the
    single-process run's (same data, seed and epochs; the sample order and the batch
    statistics differ, so the weights do too).
    """
    out = f"DDP_{strategy}"
    env = {"OMP_NUM_THREADS": "1"}  # two processes on two cores
    ok(run_cli("train", "--train_data", "D.npz", "--output_dir", out, "--max_epochs", "12", *FAST,
           "--batch_size", "8", "--seed", "0", "--devices", "2", "--strategy", strategy,
           "--accelerator", "cpu", cwd=work, env=env))  # fmt: skip
    run_dir = work / out
    assert (run_dir / "wts.h5.zip").is_file()
    logs = list(run_dir.glob("lightning_logs/*/metrics.csv"))
    assert len(logs) == 1
    assert not (run_dir / ".ptychopinn.lock").exists()
    with logs[0].open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("patterns_per_s")]
    assert len(rows) == 12  # one throughput per epoch, summed over the ranks
    ok(run_cli("infer", "--model_path", out, "--data", "D.npz", "--output_dir", out + "_OUT",
           "--refine", "0", cwd=work))  # fmt: skip
    m, ref = _metrics(work / (out + "_OUT") / "metrics.json"), reference_metrics
    assert m["amplitude_ssim"] >= ref["amplitude_ssim"] - 0.05, (m, ref)
    assert m["phase_ssim"] >= ref["phase_ssim"] - 0.05, (m, ref)
    assert m["frc50_rings"] >= 0.7 * ref["frc50_rings"], (m, ref)


def test_torchrun_launch(work):
    """Under ``torchrun`` (one process per rank, launched from outside) Lightning joins the
    group; the default recipe's epoch draw is split between the ranks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "ptychopinn.cli", "train", "--train_data", "D.npz", "--output_dir", "TORCHRUN",
         "--max_epochs", "1", "--groups_per_epoch", "16", "--devices", "2",
         "--strategy", "ddp", "--accelerator", "cpu"],
        cwd=work, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    ok(result)
    run_dir = work / "TORCHRUN"
    assert (run_dir / "wts.h5.zip").is_file()
    assert len(list(run_dir.glob("lightning_logs/*/metrics.csv"))) == 1
    assert (result.stdout + result.stderr).count("final:") == 1


def test_bf16_inference_costs_little_accuracy(work, reference_metrics, run_cli):
    """The same bundle under bfloat16 autocast scores within 0.03 SSIM of float32."""
    ok(run_cli("infer", "--model_path", "REF", "--data", "D.npz", "--output_dir", "BF16",
           "--precision", "bf16", "--refine", "0", cwd=work))  # fmt: skip
    m, ref = _metrics(work / "BF16" / "metrics.json"), reference_metrics
    assert abs(m["phase_ssim"] - ref["phase_ssim"]) < 0.03, (m, ref)
    assert abs(m["amplitude_ssim"] - ref["amplitude_ssim"]) < 0.03, (m, ref)
