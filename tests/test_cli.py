"""The command line as users run it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def sim(tmp_path_factory, run_cli) -> Path:
    d = tmp_path_factory.mktemp("sim")
    result = run_cli(
        "simulate", "--output", "scan.npz", "--N", "32", "--n_images", "64", "--object", "grf",
        "--photons", "1e5", "--seed", "1", cwd=d,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return d / "scan.npz"


def test_every_command_has_help(tmp_path, run_cli):
    for command in ("simulate", "check", "train", "infer", "evaluate", "demo"):
        result = run_cli(command, "--help", cwd=tmp_path)
        assert result.returncode == 0
        assert "--" in result.stdout
    assert "default: 20" in run_cli("train", "--help", cwd=tmp_path).stdout  # from the config


def test_simulate_writes_spec_npz(sim):
    with np.load(sim) as npz:
        assert {"diffraction", "xcoords", "ycoords", "probeGuess", "objectGuess"} <= set(npz.files)
        assert npz["diffraction"].shape == (64, 32, 32)
        assert npz["diffraction"].dtype.kind == "i"


def test_simulate_writes_the_same_scan_as_chunked_hdf5(sim, run_cli):
    """``--output X.h5``: written batch by batch, the same patterns as the NPZ; ``check`` reads it."""
    result = run_cli(
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
    summary = json.loads(run_cli("check", "scan.h5", "--json", cwd=sim.parent).stdout)
    assert summary["patterns"] == 64 and summary["diffraction_units"] == "counts"


def test_simulate_refuses_to_overwrite(sim, run_cli, user_error):
    result = run_cli("simulate", "--output", "scan.npz", "--N", "32", cwd=sim.parent)
    user_error(result, "scan.npz", "--overwrite")


def test_check_summary(sim, run_cli):
    result = run_cli("check", str(sim), "--json", cwd=sim.parent)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["patterns"] == 64
    assert summary["detector_px"] == "32 x 32"
    assert summary["reference_object"].startswith("yes")
    assert 0 < summary["overlap_estimate"] < 1
    assert summary["photons_per_pattern_mean"] == pytest.approx(1e5, rel=0.05)


def test_check_bad_file(tmp_path, run_cli, user_error):
    np.savez(tmp_path / "bad.npz", diffraction=np.ones((4, 8, 8)), xcoords=np.zeros(4))
    user_error(run_cli("check", "bad.npz", cwd=tmp_path), "bad.npz", "missing key 'ycoords'")
    user_error(run_cli("check", "nope.npz", cwd=tmp_path), "nope.npz", "not found")
    (tmp_path / "text.npz").write_text("hello")
    user_error(run_cli("check", "text.npz", cwd=tmp_path), "text.npz", "not a readable NPZ")


def test_evaluate_object_against_itself_and_noisy_copy(sim, tmp_path, run_cli, user_error):
    with np.load(sim) as npz:
        obj = npz["objectGuess"]
        arrays = dict(npz)
    rng = np.random.default_rng(0)
    noisy = obj + 0.15 * (rng.standard_normal(obj.shape) + 1j * rng.standard_normal(obj.shape))
    np.savez(tmp_path / "noisy.npz", **{**arrays, "objectGuess": noisy.astype(np.complex64)})
    same = run_cli(
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
    worse = run_cli(
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
    again = run_cli(
        "evaluate",
        "--reconstruction",
        str(sim),
        "--reference",
        str(sim),
        "--output_dir",
        "self",
        cwd=tmp_path,
    )
    user_error(again, "metrics.json", "--overwrite")


def test_evaluate_missing_reference(sim, tmp_path, run_cli, user_error):
    np.savez(tmp_path / "noref.npz", x=np.zeros(3))
    result = run_cli(
        "evaluate",
        "--reconstruction",
        str(sim),
        "--reference",
        "noref.npz",
        "--output_dir",
        "o",
        cwd=tmp_path,
    )
    user_error(result, "noref.npz", "objectGuess")
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
def test_bad_flags(tmp_path, args, fragment, run_cli, user_error):
    user_error(run_cli(*args, cwd=tmp_path), fragment)


def test_train_missing_data_file(tmp_path, run_cli, user_error):
    result = run_cli("train", "--train_data_file", "missing.npz", "--output_dir", "r", cwd=tmp_path)
    user_error(result, "missing.npz", "not found")
    assert not (tmp_path / "r").exists()


def test_debug_shows_traceback(tmp_path, run_cli):
    result = run_cli("check", "missing.npz", "--debug", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_commands_write_nothing_in_the_working_directory(sim, tmp_path, run_cli):
    before = set(tmp_path.iterdir())
    run_cli("check", str(sim), cwd=tmp_path)
    run_cli(
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
