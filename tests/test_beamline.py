"""Raw beamline files through Ptychodus's own readers: ``ptychopinn convert --reader NAME``."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from ptychopinn.cli import main
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.io.units import object_pixel_size_m
from ptychopinn.physics.functional import far_field_amplitude
from ptychopinn.workflows import read_scan

pytest.importorskip("ptychodus.plugins.nsls2_diffraction_file")

ENERGY_EV, DISTANCE_M, DETECTOR_PIXEL_M = 8000.0, 1.5, 75e-6
PAD = 4  # zero columns on each side: a 64 x 72 detector


@pytest.fixture(scope="module")
def scan():
    """Noise-free 64 x 64 patterns of a GRF with ground-truth patches."""
    return simulate_scan(n=64, n_positions=36, object_kind="grf", photons_per_pattern=None, seed=3)


def _counts(scan) -> np.ndarray:
    intensity = np.asarray(scan.diffraction, dtype=np.float64) ** 2
    return np.round(intensity * 1e6 / intensity.sum(axis=(1, 2)).mean()).astype(np.int32)


def _write_nsls2(path, scan, pixel_m: float) -> None:
    """An NSLS-II 3-ID HXN 'style 1' file: counts on a wider detector, positions in um."""
    counts = np.pad(_counts(scan), ((0, 0), (0, 0), (PAD, PAD)))
    yx_um = scan.positions_px * pixel_m * 1e6
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = counts
        f["scan/energy"] = ENERGY_EV
        f["scan/exposure_time"] = 0.1
        f["scan/scan_positions"] = yx_um[:, ::-1].T  # (2, M): x, y


def _model_r(out, patches) -> float:
    predicted = far_field_amplitude(torch.from_numpy(out.probe), torch.from_numpy(patches))
    measured = torch.from_numpy(out.amplitudes())
    scale = float((predicted * measured).sum() / predicted.square().sum())
    return float((scale * predicted - measured).abs().sum() / measured.sum())


def test_convert_reads_an_nsls2_file_with_ptychodus_reader(tmp_path, scan):
    pixel = object_pixel_size_m(ENERGY_EV, DISTANCE_M, DETECTOR_PIXEL_M, 64)
    _write_nsls2(tmp_path / "scan_1234.h5", scan, pixel)
    np.save(tmp_path / "probe.npy", scan.probe)
    out = tmp_path / "scan.npz"
    argv = [
        "convert", str(tmp_path / "scan_1234.h5"), str(out), "--reader", "NSLS_II_1",
        "--distance_m", str(DISTANCE_M), "--detector_pixel_m", str(DETECTOR_PIXEL_M),
        "--probe", str(tmp_path / "probe.npy"), "--probe_reader", "NPY",
    ]  # fmt: skip
    assert main(argv) == 0
    got = read_scan(out)
    # the 64 x 64 square of the 64 x 72 detector, the energy from the file
    assert got.N == 64 and got.pixel_size_m == pytest.approx(pixel, rel=1e-9)
    np.testing.assert_array_equal(np.asarray(got.diffraction), _counts(scan))
    shift = got.positions_px - scan.positions_px
    np.testing.assert_allclose(shift, shift[:1].repeat(len(shift), 0), atol=1e-6)
    # the patterns, positions and probe read describe the same physics
    assert _model_r(got, scan.patches.astype(np.complex64)) < 0.01


def test_positions_from_another_file_are_paired_by_index(tmp_path, scan, caplog):
    pixel = object_pixel_size_m(ENERGY_EV, DISTANCE_M, DETECTOR_PIXEL_M, 64)
    _write_nsls2(tmp_path / "raw.h5", scan, pixel)
    np.save(tmp_path / "probe.npy", scan.probe)
    yx_m = scan.positions_px[:30] * pixel  # positions for the first 30 patterns only
    np.savetxt(tmp_path / "positions.csv", yx_m, delimiter=",")  # Ptychodus's CSV: y, x
    out = tmp_path / "scan.h5"
    argv = [
        "convert", str(tmp_path / "raw.h5"), str(out), "--reader", "NSLS_II_1",
        "--positions_file", str(tmp_path / "positions.csv"), "--positions_reader", "CSV",
        "--distance_m", "1.5", "--detector_pixel_m", "75e-6",
        "--probe", str(tmp_path / "probe.npy"), "--probe_reader", "NPY",
    ]  # fmt: skip
    assert main(argv) == 0
    got = read_scan(out)
    assert got.n_patterns == 30
    np.testing.assert_array_equal(np.asarray(got.diffraction), _counts(scan)[:30])
    assert "36 patterns, 30 positions: 30 paired by index" in caplog.text


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--reader", "NoSuchBeamline"], "it has: APS_"),
        (["--reader", "NSLS_II_1", "--probe", "P", "--probe_reader", "NPY"],
         "give --distance_m --detector_pixel_m"),
        (["--reader", "NSLS_II_2", "--probe", "P", "--probe_reader", "NPY"],
         "is it the layout that reader expects?"),
        (["--reader", "NSLS_II_1", "--distance_m", "1.5", "--detector_pixel_m", "75e-6"],
         "gives no probe"),
        (["--positions_reader", "CSV"], "goes with --reader"),
    ],
)  # fmt: skip
def test_convert_reader_refuses_with_one_line(tmp_path, scan, capsys, flags, fragment):
    _write_nsls2(tmp_path / "raw.h5", scan, 1e-8)
    np.save(tmp_path / "P", scan.probe)
    flags = [str(tmp_path / "P.npy") if f == "P" else f for f in flags]
    out = tmp_path / "out.npz"
    assert main(["convert", str(tmp_path / "raw.h5"), str(out), *flags]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert fragment in err[-1]
    assert not out.exists()
