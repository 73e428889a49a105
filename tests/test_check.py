"""``ptychopinn check`` finds what real conversions get wrong: the diffraction centre."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from ptychopinn.cli import main
from ptychopinn.io.npz import write_scan_npz
from ptychopinn.io.summary import diffraction_geometry


def _with(scan, diffraction):
    return dataclasses.replace(scan, diffraction=diffraction)


def test_a_centred_scan_has_no_offset(tiny_scan):
    g = diffraction_geometry(tiny_scan)
    assert np.hypot(*g.offset_px) < 0.5 and not g.corner
    assert g.problems() == [] and g.warnings() == []


@pytest.mark.parametrize("shift", [(2, -1), (-3, 0)])
def test_a_diffraction_centre_offset_is_measured(tiny_scan, shift):
    d = np.roll(np.asarray(tiny_scan.diffraction), shift, axis=(1, 2))
    g = diffraction_geometry(_with(tiny_scan, d))
    np.testing.assert_allclose(g.offset_px, shift, atol=0.35)
    assert g.warnings() and not g.problems()


def test_patterns_not_fftshifted_fail_check_and_training(tmp_path, tiny_scan, capsys, caplog):
    """The tike layout (zero frequency in the corner) once passed check with a normal summary
    and trained on scrambled data: now check exits 2 with the fix, and train refuses it."""
    corner = _with(tiny_scan, np.fft.ifftshift(np.asarray(tiny_scan.diffraction), axes=(1, 2)))
    write_scan_npz(tmp_path / "corner.npz", corner)
    assert main(["check", str(tmp_path / "corner.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "zero frequency is in the array corner" in err[0]
    assert "np.fft.fftshift" in err[0]
    args = ["train", "--train_data", str(tmp_path / "corner.npz"), "--output_dir",
            str(tmp_path / "RUN"), "--preset", "fast", "--max_epochs", "1"]  # fmt: skip
    assert main(args) == 2
    assert not (tmp_path / "RUN" / "wts.h5.zip").exists()
    rolled = _with(tiny_scan, np.roll(np.asarray(tiny_scan.diffraction), (2, 0), axis=(1, 2)))
    write_scan_npz(tmp_path / "rolled.npz", rolled)
    with caplog.at_level(logging.WARNING):
        assert main(["check", str(tmp_path / "rolled.npz")]) == 0
    assert "diffraction-centre offset" in caplog.text
    assert "diffraction_centre_offset_px" in capsys.readouterr().out


@pytest.mark.parametrize("pupil", [0.6, 1.5])
def test_a_probe_whose_far_field_has_another_size_is_reported(tiny_scan, pupil):
    """The probe of another energy, distance or binning: its far field is smaller or larger
    than the measured patterns' central disk (the defaults' far field: ratio 1.0)."""
    from ptychopinn.data.samples import make_probe

    assert diffraction_geometry(tiny_scan).size_ratio == pytest.approx(1.0, abs=0.05)
    probe = make_probe("disk", 32, diameter_px=32 / 3, defocus=pupil * 32 / 3 / 6)
    g = diffraction_geometry(dataclasses.replace(tiny_scan, probe=probe))
    assert (g.size_ratio > 1.25) if pupil < 1 else (g.size_ratio < 0.8)
    assert any("times the size of the probe's far field" in w for w in g.warnings())
