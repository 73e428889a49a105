"""The command line as users run it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def run(*args: str, cwd: Path, module: str = "ptychopinn.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sim")
    result = run(
        "simulate", "--output", "scan.npz", "--N", "32", "--n_images", "64", "--object", "grf",
        "--photons", "1e5", "--seed", "1", cwd=d,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return d / "scan.npz"


def test_every_command_has_help(tmp_path):
    for command in ("simulate", "check", "train", "infer", "evaluate", "demo"):
        result = run(command, "--help", cwd=tmp_path)
        assert result.returncode == 0
        assert "--" in result.stdout
    assert "(default 50)" in run("train", "--help", cwd=tmp_path).stdout


def test_simulate_writes_spec_npz(sim):
    with np.load(sim) as npz:
        assert {"diffraction", "xcoords", "ycoords", "probeGuess", "objectGuess"} <= set(npz.files)
        assert npz["diffraction"].shape == (64, 32, 32)
        assert npz["diffraction"].dtype.kind == "i"


def test_simulate_writes_the_same_scan_as_chunked_hdf5(sim):
    """``--output X.h5``: written batch by batch, the same patterns as the NPZ; ``check`` reads it."""
    result = run(
        "simulate", "--output", "scan.h5", "--N", "32", "--n_images", "64", "--object", "grf",
        "--photons", "1e5", "--seed", "1", cwd=sim.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    from ptychopinn.io.hdf5 import H5Array
    from ptychopinn.workflows import read_scan

    h5, npz = read_scan(sim.parent / "scan.h5"), read_scan(sim)
    assert isinstance(h5.diffraction, H5Array) and h5.units == "counts"
    np.testing.assert_array_equal(h5.diffraction[:], npz.diffraction)
    np.testing.assert_array_equal(h5.positions_px, npz.positions_px)
    np.testing.assert_array_equal(h5.probe, npz.probe)
    summary = json.loads(run("check", "scan.h5", "--json", cwd=sim.parent).stdout)
    assert summary["patterns"] == 64 and summary["diffraction_units"] == "counts"


def test_simulate_refuses_to_overwrite(sim):
    result = run("simulate", "--output", "scan.npz", "--N", "32", cwd=sim.parent)
    assert_user_error(result, "scan.npz", "--overwrite")


def test_check_summary(sim):
    result = run("check", str(sim), "--json", cwd=sim.parent)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["patterns"] == 64
    assert summary["detector_px"] == "32 x 32"
    assert summary["reference_object"].startswith("yes")
    assert 0 < summary["overlap_estimate"] < 1
    assert summary["photons_per_pattern_mean"] == pytest.approx(1e5, rel=0.05)


def test_check_bad_file(tmp_path):
    np.savez(tmp_path / "bad.npz", diffraction=np.ones((4, 8, 8)), xcoords=np.zeros(4))
    assert_user_error(run("check", "bad.npz", cwd=tmp_path), "bad.npz", "missing key 'ycoords'")
    assert_user_error(run("check", "nope.npz", cwd=tmp_path), "nope.npz", "not found")
    (tmp_path / "text.npz").write_text("hello")
    assert_user_error(run("check", "text.npz", cwd=tmp_path), "text.npz", "not a readable NPZ")


def test_evaluate_object_against_itself_and_noisy_copy(sim, tmp_path):
    with np.load(sim) as npz:
        obj = npz["objectGuess"]
        arrays = dict(npz)
    rng = np.random.default_rng(0)
    noisy = obj + 0.15 * (rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape))
    np.savez(tmp_path / "noisy.npz", **{**arrays, "objectGuess": noisy.astype(np.complex64)})
    same = run(
        "evaluate",
        "--reconstruction",
        str(sim),
        "--reference",
        str(sim),
        "--output_dir",
        "self",
        cwd=tmp_path,
    )
    assert same.returncode == 0, same.stderr
    worse = run(
        "evaluate",
        "--reconstruction",
        "noisy.npz",
        "--reference",
        str(sim),
        "--output_dir",
        "noisy",
        cwd=tmp_path,
    )
    assert worse.returncode == 0, worse.stderr
    m_same = json.loads((tmp_path / "self" / "metrics.json").read_text())
    m_noisy = json.loads((tmp_path / "noisy" / "metrics.json").read_text())
    assert m_same["phase_ssim"] > 0.999 and m_same["phase_mae"] < 1e-4
    assert m_noisy["phase_ssim"] < m_same["phase_ssim"] - 0.1
    assert m_noisy["amplitude_mae"] > m_same["amplitude_mae"]
    assert (tmp_path / "self" / "comparison.png").stat().st_size > 1000
    again = run(
        "evaluate",
        "--reconstruction",
        str(sim),
        "--reference",
        str(sim),
        "--output_dir",
        "self",
        cwd=tmp_path,
    )
    assert_user_error(again, "metrics.json", "--overwrite")


def test_evaluate_missing_reference(sim, tmp_path):
    np.savez(tmp_path / "noref.npz", x=np.zeros(3))
    result = run(
        "evaluate",
        "--reconstruction",
        str(sim),
        "--reference",
        "noref.npz",
        "--output_dir",
        "o",
        cwd=tmp_path,
    )
    assert_user_error(result, "noref.npz", "objectGuess")
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (
            ["train", "--train_data_file", "x.npz", "--output_dir", "r", "--max_epochs", "0"],
            "--max_epochs",
        ),
        (
            ["train", "--train_data_file", "x.npz", "--output_dir", "r", "--gridsize", "7"],
            "--gridsize",
        ),
        (["train", "--train_data_file", "x.npz"], "--output_dir"),
        (
            [
                "infer",
                "--model_path",
                "r",
                "--test_data",
                "x.npz",
                "--output_dir",
                "o",
                "--batch_size",
                "-1",
            ],
            "--batch_size",
        ),
        (["simulate", "--output", "s.npz", "--n_images", "0"], "--n_images"),
    ],
)
def test_bad_flags(tmp_path, args, fragment):
    assert_user_error(run(*args, cwd=tmp_path), fragment)


def test_train_missing_data_file(tmp_path):
    result = run("train", "--train_data_file", "missing.npz", "--output_dir", "r", cwd=tmp_path)
    assert_user_error(result, "missing.npz", "not found")
    assert not (tmp_path / "r").exists()


def test_debug_shows_traceback(tmp_path):
    result = run("check", "missing.npz", "--debug", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_commands_write_nothing_in_the_working_directory(sim, tmp_path):
    before = set(tmp_path.iterdir())
    run("check", str(sim), cwd=tmp_path)
    run(
        "evaluate",
        "--reconstruction",
        str(sim),
        "--reference",
        str(sim),
        "--output_dir",
        str(tmp_path / "ev"),
        cwd=tmp_path,
    )
    assert set(tmp_path.iterdir()) - before == {tmp_path / "ev"}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], ("backprop_unet", 1.0, 2)),  # CPU, network not chosen: the U-Net preset
        # chosen: kept, the rest from ModelConfig (the upstream network)
        (["--n_filters_scale", "2"], ("ptychopinn", 2.0, 1)),
        (["--stem_stride", "1"], ("ptychopinn", 2.0, 1)),
        (["--architecture", "ptychopinn"], ("ptychopinn", 2.0, 1)),
        (["--architecture", "backprop_unet"], ("backprop_unet", 2.0, 1)),
    ],
)
def test_cpu_runs_default_to_the_unet_preset(tmp_path, flags, expected):
    from ptychopinn.cli import build_parser
    from ptychopinn.commands import config_from_args

    args = build_parser().parse_args(
        ["train", "--train_data_file", "D.npz", "--output_dir", str(tmp_path), "--accelerator",
         "cpu", *flags]
    )  # fmt: skip
    model = config_from_args(args, 64).model
    assert (model.architecture, model.n_filters_scale, model.stem_stride) == expected


@pytest.mark.parametrize("native", [True, False])
def test_overlap_preset_gives_the_recipe_and_what_is_given_wins(tmp_path, monkeypatch, native):
    from ptychopinn import commands
    from ptychopinn.cli import build_parser

    monkeypatch.setattr(commands, "native_bf16", lambda accelerator: native)

    def config(*flags: str):
        args = build_parser().parse_args(
            ["train", "--train_data_file", "D.npz", "--output_dir", str(tmp_path), "--preset",
             "overlap", *flags]
        )  # fmt: skip
        return commands.config_from_args(args, 64)

    m, t = config().model, config().training
    assert (m.gridsize, m.per_pattern, m.group_stride) == (3, True, 2)
    assert (m.architecture, m.n_filters_scale, m.stem_stride) == ("backprop_unet", 1.0, 2)
    assert (m.norm_layer, m.merge_weights) == ("layer", "probe")
    assert (t.max_epochs, t.batch_size, t.learning_rate, t.scheduler) == (20, 2, 1e-3, "cosine")
    assert (t.warmup_fraction, t.adam_beta2) == (0.06, 0.99)
    assert t.precision == ("bf16-mixed" if native else "32-true")
    (tmp_path / "c.json").write_text('{"training": {"batch_size": 4, "precision": "32-true"}}')
    given = config(
        "--max_epochs", "50", "--gridsize", "2", "--norm_layer", "batch", "--warmup_fraction", "0",
        "--config", str(tmp_path / "c.json"),
    )  # fmt: skip
    assert (given.training.max_epochs, given.training.batch_size) == (50, 4)
    assert (given.model.norm_layer, given.training.warmup_fraction) == ("batch", 0.0)
    assert given.training.precision == "32-true" and given.model.gridsize == 2


def test_json_config_choosing_the_size_is_respected(tmp_path):
    from ptychopinn.cli import build_parser
    from ptychopinn.commands import config_from_args

    (tmp_path / "c.json").write_text('{"model": {"n_filters_scale": 0.5}}')
    args = build_parser().parse_args(
        ["train", "--train_data_file", "D.npz", "--output_dir", str(tmp_path), "--config",
         str(tmp_path / "c.json")]
    )  # fmt: skip
    model = config_from_args(args, 64).model
    assert (model.architecture, model.n_filters_scale, model.stem_stride) == ("ptychopinn", 0.5, 1)
