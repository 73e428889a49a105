"""Faults and reproducibility: NaN losses, signals, concurrent runs, bit-identical training.

Tiny settings (N = 32, 64 positions, a cheap network, 32 groups, 1-3 epochs) keep the
whole module to about a minute on 2 CPU cores. The subprocess tests are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ptychopinn import cli, workflows
from ptychopinn.bundle import load_bundle, save_bundle
from ptychopinn.config import Config, ModelConfig, TrainingConfig
from ptychopinn.data.datamodule import GroupDataModule
from ptychopinn.data.dataset import Normalization
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.io.npz import read_npz, write_scan_npz
from ptychopinn.io.scan import ScanData
from ptychopinn.training.callbacks import (
    GracefulShutdown,
    LastStateCheckpoint,
    NonFiniteLossError,
    NonFiniteLossGuard,
    TrainingInterruptedError,
)
from ptychopinn.training.module import PtychoPINNModule

CHEAP_MODEL = {"stem_stride": 2, "n_filters_scale": 0.25, "overlap_grid": 1}
N_GROUPS, BATCH = 32, 16  # 30 training groups = 2 steps per epoch, 2 validation groups
CHEAP_TRAINING = {"groups_per_epoch": N_GROUPS - 2}


def tiny_config(max_epochs: int = 2, **training: Any) -> Config:
    return Config(
        model=ModelConfig(N=32, **CHEAP_MODEL),
        training=TrainingConfig(
            max_epochs=max_epochs,
            n_groups=N_GROUPS,
            batch_size=BATCH,
            logger="none",
            **{**CHEAP_TRAINING, **training},
        ),
    )


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hardening")
    scan = simulate_scan(n=32, n_positions=64, photons_per_pattern=1e5, seed=0)
    write_scan_npz(d / "scan.npz", scan)
    (d / "cheap.json").write_text(json.dumps({"model": CHEAP_MODEL, "training": CHEAP_TRAINING}))
    return d / "scan.npz"


@pytest.fixture(scope="module")
def scan(scan_path: Path) -> ScanData:
    return read_npz(scan_path)


@pytest.fixture(autouse=True)
def isolated_process_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what Lightning sets process-wide (seed env vars, deterministic algorithms)."""
    names = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG")
    environment = {name: os.environ.get(name) for name in names}
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark
    for signum, handler in handlers.items():
        assert signal.getsignal(signum) == handler, f"{signum!r} handler not restored"


def leftovers(run_dir: Path) -> list[str]:
    """Temporary, partial or lock files left in a run directory."""
    return sorted(
        str(p.relative_to(run_dir))
        for p in run_dir.rglob("*")
        if ".part" in p.name or p.name.startswith(".") or p.name.endswith(".tmp")
    )


def ckpt(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


# -- the callbacks on a plain Trainer ---------------------------------------------------------
def fit(
    scan: ScanData,
    run_dir: Path,
    callbacks: list[Any],
    max_epochs: int = 2,
    resume: bool = False,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """Train like workflows.train does (LastStateCheckpoint, val_loss monitor)."""
    config = tiny_config(max_epochs)
    L.seed_everything(0, workers=True, verbose=False)
    normalization = Normalization.from_scan(scan)
    module = PtychoPINNModule(
        config.to_dict(), normalization.to_dict(), probe=torch.from_numpy(scan.probe)
    )
    checkpoint = LastStateCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best-{epoch:03d}", monitor="val_loss",
        save_last=True, save_top_k=1,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, callbacks=[*callbacks, checkpoint],
        default_root_dir=run_dir, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1,
    )  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    datamodule = GroupDataModule(config, scan, normalization)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    return trainer, checkpoint


def poison(monkeypatch: pytest.MonkeyPatch, stage: str, from_step: int) -> None:
    """Make the ``stage`` loss NaN from global step ``from_step`` on."""
    original = PtychoPINNModule._common_step

    def step(
        self: PtychoPINNModule, batch: dict[str, torch.Tensor], s: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        loss, r = original(self, batch, s)
        poisoned = s == stage and self.global_step >= from_step
        return (loss * float("nan") if poisoned else loss), r

    monkeypatch.setattr(PtychoPINNModule, "_common_step", step)


def test_last_checkpoint_follows_every_epoch_not_only_the_best(
    scan: ScanData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``last.ckpt`` is the state after the last epoch even when that epoch did not improve
    the monitored loss (Lightning 2.6.6's ``save_last`` alone left it at the best epoch, so
    ``--resume`` repeated the epochs since)."""
    original = PtychoPINNModule._common_step

    def step(
        self: PtychoPINNModule, batch: dict[str, torch.Tensor], s: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if s != "val":
            return original(self, batch, s)
        loss = torch.tensor(float(self.current_epoch))  # gets worse every epoch
        self.log("val_loss", loss, batch_size=batch["amplitude"].shape[0])
        return loss, None

    monkeypatch.setattr(PtychoPINNModule, "_common_step", step)
    trainer, checkpoint = fit(scan, tmp_path, [NonFiniteLossGuard()], max_epochs=3)
    assert Path(checkpoint.best_model_path).name == "best-epoch=000.ckpt"
    last = ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, trainer.global_step) == (2, 6)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best-epoch=000.ckpt",
        "last.ckpt",
    ]


@pytest.mark.parametrize("stage", ["train", "val"])
def test_nan_loss_stops_before_a_checkpoint_is_written(
    scan: ScanData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """NaN in the last step (or validation) of epoch 1: last.ckpt stays epoch 0's, finite.

    Without the guard, ModelCheckpoint(save_last=True) would overwrite last.ckpt at the
    end of epoch 1 with NaN weights.
    """
    poison(monkeypatch, stage, from_step=3)  # step 3 = the last training step of epoch 1
    name = {"train": "training", "val": "validation"}[stage]
    with pytest.raises(NonFiniteLossError, match=f"{name} loss is nan") as info:
        fit(scan, tmp_path, [NonFiniteLossGuard()])
    assert "last.ckpt is kept" in str(info.value)
    assert info.value.exit_status == 3  # type: ignore[attr-defined]
    last = ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == 2
    assert all_finite(last["state_dict"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best-epoch=000.ckpt",
        "last.ckpt",
    ]


def test_non_finite_weights_are_never_checkpointed(scan: ScanData, tmp_path: Path) -> None:
    """Weights that turned NaN/Inf (whatever the loss said) are refused at checkpoint time."""
    trainer, _ = fit(scan, tmp_path, [NonFiniteLossGuard()], max_epochs=1)
    module = trainer.lightning_module
    assert isinstance(module, PtychoPINNModule)
    with torch.no_grad():
        weight = next(module.net.parameters())
        weight[(0,) * weight.ndim] = float("inf")
    with pytest.raises(NonFiniteLossError, match="weights are NaN or Inf"):
        trainer.save_checkpoint(tmp_path / "checkpoints" / "after.ckpt")
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "best-epoch=000.ckpt",
        "last.ckpt",
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_in_first_epoch_saves_resumable_checkpoint(
    scan: ScanData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    """A signal before any epoch ended: the step finishes, last.ckpt is written, resume works."""
    original = PtychoPINNModule.training_step

    def step(self: PtychoPINNModule, batch: dict[str, torch.Tensor], i: int) -> torch.Tensor:
        if self.global_step == 0:
            signal.raise_signal(signum)  # arrives mid-step; the step still completes
        return original(self, batch, i)

    monkeypatch.setattr(PtychoPINNModule, "training_step", step)
    with pytest.raises(TrainingInterruptedError, match="continue with --resume") as info:
        fit(scan, tmp_path, [NonFiniteLossGuard(), GracefulShutdown()])
    assert info.value.exit_status == 128 + signum
    last_path = tmp_path / "checkpoints" / "last.ckpt"
    state = ckpt(last_path)
    assert state["epoch"] == 0 and state["global_step"] == 1  # exactly the one step
    PtychoPINNModule.load_from_checkpoint(last_path, map_location="cpu")  # rebuilds the model

    monkeypatch.setattr(PtychoPINNModule, "training_step", original)
    _, checkpoint = fit(scan, tmp_path, [GracefulShutdown()], max_epochs=1, resume=True)
    resumed = ckpt(last_path)
    assert resumed["epoch"] == 0 and resumed["global_step"] == 2  # epoch 0 finished, 2 steps
    assert checkpoint.last_model_path == str(last_path.resolve())
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))  # no stale twin


def test_second_ctrl_c_stops_at_once() -> None:
    shutdown = GracefulShutdown()
    shutdown.on_train_start(None, None)  # type: ignore[arg-type]
    try:
        signal.raise_signal(signal.SIGINT)
        assert shutdown.received == signal.SIGINT
        signal.raise_signal(signal.SIGTERM)  # other signals while waiting change nothing
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    finally:
        shutdown.on_train_end(None, None)  # type: ignore[arg-type]


# -- through workflows.train and the CLI (needs the callbacks registered in workflows) -------
def test_nan_loss_through_the_cli(
    scan_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    poison(monkeypatch, "train", from_step=2)  # epoch 1
    run_dir = tmp_path / "RUN"
    status = cli.main(["train", "--train_data_file", str(scan_path), "--output_dir", str(run_dir),
                       "--config", str(scan_path.parent / "cheap.json"), "--max_epochs", "3",
                       "--n_groups", str(N_GROUPS), "--batch_size", str(BATCH), "--logger", "none",
                       "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 3, err
    assert "Traceback" not in err
    assert "ptychopinn train: error: training loss is nan" in err.strip().splitlines()[-1]
    assert not (run_dir / "wts.h5.zip").exists()
    last = ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0 and all_finite(last["state_dict"])
    assert leftovers(run_dir) == []


def test_same_seed_gives_bit_identical_weights_and_reconstructions(
    scan: ScanData, tmp_path: Path
) -> None:
    config = tiny_config(max_epochs=1, deterministic=True, seed=7)
    runs = [workflows.train(config, scan, tmp_path / f"run{i}", progress=False) for i in (0, 1)]
    a, b = (load_bundle(run.bundle_path) for run in runs)
    state_a, state_b = a.net.state_dict(), b.net.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert torch.equal(a.probe, b.probe) and a.normalization == b.normalization
    L.seed_everything(7, verbose=False)  # the initial weights of both runs
    initial = PtychoPINNModule(config.to_dict(), a.normalization.to_dict(), probe=a.probe)
    changed = [k for k, v in initial.net.state_dict().items() if not torch.equal(v, state_a[k])]
    assert changed  # it did train

    rec_a = workflows.reconstruct(a, scan)
    assert np.array_equal(rec_a.object, workflows.reconstruct(b, scan).object)
    # bundle round trip: save what was loaded, load it again, same reconstruction
    again = save_bundle(tmp_path / "again.zip", a.config, a.normalization, a.net, a.probe)
    rec_again = workflows.reconstruct(load_bundle(again), scan)
    assert np.array_equal(rec_a.object, rec_again.object)
    assert rec_a.origin_px == rec_again.origin_px


# -- real processes ---------------------------------------------------------------------------
def _train_command(scan_path: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train", "--train_data_file", str(scan_path), "--output_dir", str(run_dir),
        "--config", str(scan_path.parent / "cheap.json"), "--n_groups", str(N_GROUPS),
        "--batch_size", str(BATCH), "--logger", "none", "--quiet", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_sigterm_saves_resumable_checkpoint_and_second_run_is_refused(
    scan_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "RUN"
    command = [sys.executable, "-m", "ptychopinn.cli", *_train_command(scan_path, run_dir)]
    process = subprocess.Popen(
        [*command, "--max_epochs", "100000"], stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        last = run_dir / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 120
        while not last.exists():  # epoch 0 done: training is under way
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        first_step = ckpt(last)["global_step"]

        # a second run into the same directory is refused while the first is active
        capsys.readouterr()
        status = cli.main(_train_command(scan_path, run_dir, "--max_epochs", "1"))
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1, err
        assert "another run is using this directory" in err[0]

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    final = stderr.strip().splitlines()[-1]
    assert "interrupted by SIGTERM" in final and "--resume" in final, stderr
    assert not (run_dir / "wts.h5.zip").exists()  # no bundle of a half-trained model
    assert leftovers(run_dir) == []  # no .part files, no lock
    state = ckpt(last)
    assert state["global_step"] > first_step  # saved at the signal, not the old epoch-end file
    PtychoPINNModule.load_from_checkpoint(last, map_location="cpu")

    # --resume continues from there and finishes with a bundle
    epochs = int(state["epoch"]) + 2
    status = cli.main(_train_command(scan_path, run_dir, "--max_epochs", str(epochs), "--resume"))
    assert status == 0, capsys.readouterr().err
    resumed = ckpt(last)
    assert resumed["global_step"] > state["global_step"] and resumed["epoch"] == epochs - 1
    assert (run_dir / "wts.h5.zip").is_file() and leftovers(run_dir) == []


@pytest.mark.slow
def test_sigterm_before_training_leaves_no_lock(scan_path: Path, tmp_path: Path) -> None:
    """SIGTERM while the run sets up (lock taken, training not started): clean exit 143."""
    run_dir = tmp_path / "RUN"
    command = [sys.executable, "-m", "ptychopinn.cli", *_train_command(scan_path, run_dir)]
    process = subprocess.Popen(
        [*command, "--max_epochs", "100000"], stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / ".ptychopinn.lock").exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr
    assert leftovers(run_dir) == []  # the lock is gone: the next run is not refused
    assert not (run_dir / "wts.h5.zip").exists()
