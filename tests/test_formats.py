"""The formats beamlines write (CXI, the tike / pty-chi NPZ) and ``ptychopinn convert``:
round trips, a larger detector cropped or binned to N with the probe resampled so the
forward model still explains the data, the diffraction centre found and corrected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptychopinn.cli import main
from ptychopinn.convert import ConvertOptions, convert, prepare_scan
from ptychopinn.data.simulate import simulate_scan
from ptychopinn.io.cxi import write_cxi
from ptychopinn.io.detector import fourier_crop, prepare, upsample_probe
from ptychopinn.io.npz import write_scan_npz
from ptychopinn.io.summary import diffraction_geometry
from ptychopinn.io.tike import write_tike_npz
from ptychopinn.io.units import object_pixel_size_m
from ptychopinn.physics.functional import far_field_amplitude, r_factor
from ptychopinn.workflows import read_scan

GEOMETRY = {"photon_energy_eV": 8000.0, "detector_distance_m": 1.5, "detector_pixel_m": 75e-6}


@pytest.fixture(scope="module")
def big_scan():
    """Noise-free 64 x 64 patterns of a GRF with ground-truth patches (a 'large' detector)."""
    return simulate_scan(n=64, n_positions=36, object_kind="grf", photons_per_pattern=None, seed=3)


def _model_r(scan, patches) -> float:
    """Amplitude R-factor of the scan's data against |F(probe * patches)|."""
    predicted = far_field_amplitude(torch.from_numpy(scan.probe), torch.from_numpy(patches))
    measured = torch.from_numpy(scan.amplitudes())
    good = None if scan.good_pixels is None else torch.from_numpy(scan.good_pixels)
    return float(r_factor(predicted * _scale(predicted, measured), measured, good))


def _scale(predicted, measured):
    return float((predicted * measured).sum() / predicted.square().sum())


def test_the_forward_model_explains_the_simulated_data(big_scan):
    assert _model_r(big_scan, big_scan.patches) < 1e-4


def test_a_cropped_detector_keeps_the_model_with_the_resampled_probe(big_scan):
    """Cropping 64 -> 32 detector pixels doubles the object pixel: the probe resampled by
    cropping its far field explains the cropped data with the object resampled the same way
    (a probe merely cut to 32 pixels does not)."""
    sized = dataclasses.replace(big_scan, pixel_size_m=1e-8)
    small = prepare(sized, crop=32, centre=(32.0, 32.0), correct_centre=False)
    assert small.N == 32 and small.pixel_size_m == pytest.approx(2e-8)
    np.testing.assert_allclose(small.positions_px, big_scan.positions_px / 2)
    assert small.object.shape == tuple(round(v / 2) for v in big_scan.object.shape)
    # the same band on the same grid (fourier_crop keeps power: its amplitudes double)
    coarse = fourier_crop(big_scan.object[None, :64, :64], 32)[0] / 2
    np.testing.assert_allclose(small.object[4:12, 4:12], coarse[4:12, 4:12], atol=0.15)
    patches = fourier_crop(big_scan.patches, 32).astype(np.complex64)
    assert _model_r(small, patches) < 0.1  # the rest: the object resampled apart from the probe
    cut = dataclasses.replace(small, probe=big_scan.probe[:, 16:48, 16:48])
    assert _model_r(cut, patches) > 3 * _model_r(small, patches)


def test_binning_sums_counts_and_keeps_bad_pixels_bad(big_scan):
    bad = np.zeros((64, 64), bool)
    bad[5, 7] = True
    scan = dataclasses.replace(big_scan, bad_pixels=bad, background=1.0)
    binned = prepare(scan, bin=2, correct_centre=False)
    np.testing.assert_array_equal(binned.background, np.full((32, 32), 4.0))
    assert binned.N == 32 and binned.bad_pixels[2, 3] and binned.bad_pixels.sum() == 1
    fine = scan.amplitudes()[:4].astype(np.float64) ** 2
    expect = fine.reshape(4, 32, 2, 32, 2).sum(axis=(2, 4))
    got = binned.amplitudes(np.arange(4)).astype(np.float64) ** 2
    good = ~binned.bad_pixels
    np.testing.assert_allclose(got[:, good], expect[:, good], rtol=1e-4)
    np.testing.assert_allclose(binned.positions_px, big_scan.positions_px)


def test_upsampled_probe_comes_back_through_prepare(big_scan):
    small = prepare(big_scan, crop=64, bin=2, correct_centre=False)
    big = upsample_probe(small.probe, 64, 64)
    again = prepare(dataclasses.replace(big_scan, probe=big), bin=2, correct_centre=False)
    np.testing.assert_allclose(again.probe, small.probe, atol=1e-4 * np.abs(small.probe).max())


@pytest.mark.parametrize("shift", [(3, -2), (-1, 2)])
def test_a_centre_offset_is_corrected_by_a_probe_ramp(big_scan, shift):
    """Patterns whose zero frequency sits off the centre pixel: the corrected probe explains
    them with the true (ramp-free) object; the uncorrected one does not."""
    rolled = dataclasses.replace(
        big_scan, diffraction=np.roll(np.asarray(big_scan.diffraction), shift, axis=(1, 2))
    )
    fixed = prepare(rolled)
    assert fixed.metadata["centre_offset_corrected_px"] == pytest.approx(shift, abs=0.3)
    assert _model_r(fixed, big_scan.patches) < 0.02
    assert _model_r(rolled, big_scan.patches) > 5 * _model_r(fixed, big_scan.patches)
    assert np.hypot(*diffraction_geometry(fixed).offset_px) < 0.3


def test_cxi_round_trip_with_geometry_units_and_mask(tmp_path, big_scan):
    bad = np.zeros((64, 64), bool)
    bad[1, 2] = True
    pixel = object_pixel_size_m(8000.0, 1.5, 75e-6, 64)
    scan = dataclasses.replace(
        big_scan, bad_pixels=bad, pixel_size_m=pixel, metadata={"geometry": GEOMETRY}
    )
    write_cxi(tmp_path / "s.cxi", scan)
    back = read_scan(tmp_path / "s.cxi")
    assert back.units == "counts" and back.pixel_size_m == pytest.approx(pixel)
    np.testing.assert_allclose(back.positions_px, scan.positions_px, atol=1e-9)
    np.testing.assert_allclose(back.amplitudes(), scan.amplitudes(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(back.bad_pixels, bad)
    np.testing.assert_allclose(back.probe, scan.probe)
    assert back.metadata["geometry"] == pytest.approx(GEOMETRY)
    assert back.object is not None


def test_ptychodus_reads_our_cxi(tmp_path, big_scan):
    """Ptychodus's own CXI readers see our patterns, mask, geometry, probe and positions."""
    cxi = pytest.importorskip("ptychodus.plugins.cxi_file")
    pixel = object_pixel_size_m(8000.0, 1.5, 75e-6, 64)
    scan = dataclasses.replace(big_scan, pixel_size_m=pixel, metadata={"geometry": GEOMETRY})
    write_cxi(tmp_path / "s.cxi", scan)
    dataset = cxi.CXIDiffractionFileReader().read(tmp_path / "s.cxi")
    meta = dataset.get_metadata()
    assert meta.photon_energy_eV == pytest.approx(8000.0)
    assert meta.detector_distance_m == pytest.approx(1.5)
    patterns = np.concatenate([array.get_patterns() for array in dataset])
    np.testing.assert_allclose(patterns, scan.amplitudes() ** 2, rtol=1e-5, atol=1e-4)
    product = cxi.CXIProductFileIO().read(tmp_path / "s.cxi")
    x = product.probe_positions.get_coordinates_x_m()
    y = product.probe_positions.get_coordinates_y_m()
    np.testing.assert_allclose(np.diff(x), np.diff(scan.positions_px[:, 1]) * pixel, rtol=1e-9)
    np.testing.assert_allclose(np.diff(y), np.diff(scan.positions_px[:, 0]) * pixel, rtol=1e-9)
    np.testing.assert_allclose(product.probes.get_array().reshape(scan.probe.shape), scan.probe)


def test_tike_layout_corner_order_and_corner_positions(tmp_path, tiny_scan):
    write_tike_npz(tmp_path / "t.npz", tiny_scan)
    with np.load(tmp_path / "t.npz") as raw:
        assert raw["probe"].shape == (1, 1, 1, 32, 32)
        assert diffraction_geometry(
            dataclasses.replace(tiny_scan, diffraction=raw["data"], units="counts")
        ).corner  # written in FFT order, as tike keeps it
    back = read_scan(tmp_path / "t.npz")
    assert back.metadata["tike"]["zero_frequency"].startswith("corner")
    np.testing.assert_allclose(back.positions_px, tiny_scan.positions_px, atol=1e-4)
    np.testing.assert_allclose(back.amplitudes(), tiny_scan.amplitudes(), rtol=1e-5, atol=1e-3)


def test_convert_cli_crops_a_cxi_detector_and_check_says_what_it_assumed(
    tmp_path, big_scan, capsys
):
    intensity = np.asarray(big_scan.diffraction, dtype=np.float64) ** 2
    counts = np.round(intensity * 1e6 / intensity.sum(axis=(1, 2)).mean()).astype(np.int32)
    raw = dataclasses.replace(
        big_scan,
        diffraction=np.roll(counts, (2, -3), axis=(1, 2)),
        units="counts",
        pixel_size_m=object_pixel_size_m(8000.0, 1.5, 75e-6, 64),
        metadata={"geometry": GEOMETRY},
    )
    write_cxi(tmp_path / "raw.cxi", raw)
    out = tmp_path / "n32.npz"
    assert main(["convert", str(tmp_path / "raw.cxi"), str(out), "--detector_crop", "32"]) == 0
    scan = read_scan(out)
    assert scan.N == 32 and scan.pixel_size_m == pytest.approx(2 * raw.pixel_size_m)
    assert scan.metadata == {}  # a plain scan NPZ: nothing but arrays
    window = read_scan(tmp_path / "raw.cxi").metadata
    assert window["cxi"]["data"] == "entry_1/data_1/data"
    patches = fourier_crop(big_scan.patches, 32).astype(np.complex64)
    assert _model_r(scan, patches) < 0.1
    capsys.readouterr()
    assert main(["check", str(out), "--json"]) == 0
    text = capsys.readouterr().out
    assert '"object_pixel_size": "' in text and "patch centres" in text


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--detector_crop", "30", "--detector_bin", "4"], "not a multiple of the bin"),
        (["--detector_crop", "128"], "larger than the 64-pixel detector"),
        (["--detector_crop", "48", "--centre", "5,5"], "leaves the 64-pixel detector"),
        (["--energy_eV", "8000"], "missing detector_distance_m, detector_pixel_m"),
    ],
)
def test_convert_refuses_bad_requests_with_one_line(tmp_path, big_scan, capsys, flags, fragment):
    write_scan_npz(tmp_path / "in.npz", big_scan)
    out = tmp_path / "out.npz"
    assert main(["convert", str(tmp_path / "in.npz"), str(out), *flags]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert fragment in err[-1]
    assert not out.exists()


def test_convert_records_a_background_the_scan_keeps(tmp_path, tiny_scan, capsys):
    write_scan_npz(tmp_path / "in.npz", tiny_scan)
    out = tmp_path / "out.h5"
    assert main(["convert", str(tmp_path / "in.npz"), str(out), "--background", "0.5"]) == 0
    np.testing.assert_array_equal(read_scan(out).background, np.full((32, 32), 0.5))
    capsys.readouterr()
    assert main(["check", str(out)]) == 0
    assert "512 photons (modelled in every likelihood)" in capsys.readouterr().out


def test_convert_refuses_a_centre_that_is_not_a_pair(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "in.npz", str(tmp_path / "out.npz"), "--centre", "5"])
    assert exit_info.value.code == 2 and "expected Y,X" in capsys.readouterr().err


def test_convert_writes_nothing_over_an_existing_file_or_its_input(tmp_path, tiny_scan):
    write_scan_npz(tmp_path / "in.npz", tiny_scan)
    (tmp_path / "out.cxi").write_text("keep")
    assert main(["convert", str(tmp_path / "in.npz"), str(tmp_path / "out.cxi")]) == 2
    assert (tmp_path / "out.cxi").read_text() == "keep"
    args = ["convert", str(tmp_path / "in.npz"), str(tmp_path / "in.npz"), "--overwrite"]
    assert main(args) == 2
    # CXI needs the object pixel size for its metres
    assert main(["convert", str(tmp_path / "in.npz"), str(tmp_path / "new.cxi")]) == 2
    assert not (tmp_path / "new.cxi").exists()


def test_a_probe_given_at_the_output_size_is_used_as_is(tmp_path, big_scan):
    target = prepare(big_scan, crop=32, centre=(32.0, 32.0), correct_centre=False).probe
    options = ConvertOptions(detector_crop=32, centre=(32.0, 32.0), correct_centre=False)
    write_scan_npz(tmp_path / "in.npz", big_scan)
    np.savez(tmp_path / "probe.npz", probeGuess=target[0] * 2)
    args = ["convert", str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), "--detector_crop",
            "32", "--centre", "32,32", "--no_centre_correction", "--probe",
            str(tmp_path / "probe.npz")]  # fmt: skip
    assert main(args) == 0
    got = read_scan(tmp_path / "out.npz").probe
    np.testing.assert_allclose(got, 2 * target, atol=1e-3 * np.abs(target).max())
    scan = convert(tmp_path / "in.npz", tmp_path / "again.npz", options)
    np.testing.assert_allclose(scan.probe, target, atol=1e-5)
    assert prepare_scan(big_scan, ConvertOptions()).N == 64


def test_positions_can_be_mirrored_and_swapped(tmp_path, tiny_scan):
    write_scan_npz(tmp_path / "in.npz", tiny_scan)
    args = ["convert", str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), "--flip_positions",
            "y", "--swap_positions"]  # fmt: skip
    assert main(args) == 0
    got = read_scan(tmp_path / "out.npz").positions_px
    y, x = tiny_scan.positions_px[:, 1], tiny_scan.positions_px[:, 0]  # swapped
    np.testing.assert_allclose(got[:, 0], y.min() + y.max() - y)
    np.testing.assert_allclose(got[:, 1], x)
