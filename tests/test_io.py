"""ScanData validation and NPZ reading: every error names the array, expected and actual."""

from __future__ import annotations

import numpy as np
import pytest

from ptychopinn.errors import DataError
from ptychopinn.io.npz import read_npz, scan_to_arrays, write_scan_npz
from ptychopinn.io.scan import ScanData


def _arrays(m: int = 12, n: int = 16, counts: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    diff = rng.poisson(5.0, size=(m, n, n)).astype(np.int32 if counts else np.float32)
    g = np.arange(m, dtype=np.float64)
    return {
        "diffraction": diff,
        "xcoords": 10 + g,
        "ycoords": 12 + 0.5 * g,
        "probeGuess": (np.ones((n, n)) * (1 + 0.5j)).astype(np.complex64),
        "objectGuess": np.ones((40, 40), np.complex64),
    }


def _write(tmp_path, arrays, name="scan.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_roundtrip_counts(tmp_path):
    scan = read_npz(_write(tmp_path, _arrays()))
    assert scan.units == "counts"
    assert scan.n_patterns == 12 and scan.N == 16
    assert np.allclose(scan.positions_px[:, 1], 10 + np.arange(12))  # x = column
    assert np.allclose(scan.amplitudes()[0] ** 2, _arrays()["diffraction"][0])
    write_scan_npz(tmp_path / "copy.npz", scan)
    again = read_npz(tmp_path / "copy.npz")
    assert np.array_equal(again.diffraction, scan.diffraction)
    assert np.array_equal(again.positions_px, scan.positions_px)
    assert set(scan_to_arrays(again)) >= {
        "diffraction",
        "xcoords",
        "ycoords",
        "probeGuess",
        "objectGuess",
    }


def test_legacy_diff3d_hwm_is_transposed(tmp_path):
    a = _arrays(m=12, n=16, counts=False)
    a["diff3d"] = np.transpose(a.pop("diffraction"), (1, 2, 0)).copy()
    scan = read_npz(_write(tmp_path, a))
    assert scan.diffraction.shape == (12, 16, 16)
    assert scan.units == "amplitude"


def test_float_counts_warn(tmp_path, caplog):
    a = _arrays()
    a["diffraction"] = (a["diffraction"] * 10).astype(np.float32)
    read_npz(_write(tmp_path, a))
    assert "look like photon counts" in caplog.text
    assert read_npz(tmp_path / "scan.npz", units="counts").units == "counts"


def test_probe_modes_accepted(tmp_path):
    a = _arrays()
    a["probeGuess"] = np.stack([a["probeGuess"], 0.3 * a["probeGuess"]])
    assert read_npz(_write(tmp_path, a)).n_probe_modes == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.pop("xcoords"), "missing key 'xcoords'"),
        (lambda a: a.pop("diffraction"), "missing key 'diffraction'"),
        (
            lambda a: a.update(probeGuess=np.ones((8, 8), np.complex64)),
            "probeGuess: expected shape (16, 16)",
        ),
        (lambda a: a.update(diffraction=a["diffraction"][:5]), "expected 12 patterns"),
        (lambda a: a.update(diffraction=a["diffraction"][:, :, :8]), "expected square patterns"),
        (lambda a: a.update(diffraction=-a["diffraction"] - 1), "non-negative"),
        (lambda a: a.update(diffraction=np.full((12, 16, 16), np.nan, np.float32)), "NaN or Inf"),
        (lambda a: a.update(xcoords=np.full(12, np.inf)), "NaN or Inf"),
        (lambda a: a.update(ycoords=np.zeros(11)), "equal length"),
        (
            lambda a: a.update(objectGuess=np.ones((10, 10), np.complex64)),
            "must lie on objectGuess",
        ),
        (
            lambda a: a.update(objectGuess=np.ones((2, 40, 40), np.complex64)),
            "objectGuess: expected 2 dimensions",
        ),
        (
            lambda a: a.update(diffraction=a["diffraction"].astype(np.complex64)),
            "real integer or float",
        ),
        (
            lambda a: a.update(scan_index=np.zeros(3, np.int64)),
            "scan_index: expected integer shape (12,)",
        ),
        (lambda a: a.update(probeGuess=np.zeros((16, 16), np.complex64)), "all zeros"),
    ],
)
def test_bad_input_names_array(tmp_path, mutate, message):
    a = _arrays()
    mutate(a)
    with pytest.raises(DataError, match=None) as info:
        read_npz(_write(tmp_path, a))
    assert message in str(info.value)
    assert "scan.npz" in str(info.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path):
    a = _arrays()
    a["objectGuess"] = np.array([{"evil": 1}], dtype=object)
    path = _write(tmp_path, a)
    with pytest.raises(DataError, match="object arrays are not accepted"):
        read_npz(path)


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_not_an_npz(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.npz"):
        read_npz(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_npz(tmp_path / "nope.npz")


def test_scandata_subset_and_take_order():
    a = _arrays()
    scan = ScanData(
        diffraction=a["diffraction"],
        units="counts",
        positions_px=np.zeros((12, 2)) + 20,
        probe=a["probeGuess"],
    )
    sub = scan.subset(np.array([5, 1, 3]))
    assert np.array_equal(sub.diffraction, a["diffraction"][[5, 1, 3]])
    assert np.allclose(scan.amplitudes(np.array([3, 3, 0])), np.sqrt(a["diffraction"][[3, 3, 0]]))


def test_reconstruction_pngs_keep_every_pixel_and_state_their_range(tmp_path):
    from PIL import Image

    from ptychopinn.io.images import save_image

    image = np.linspace(-1.0, 2.0, 60 * 80).reshape(60, 80)
    save_image(tmp_path / "reconstructed_phase.png", image, "twilight")
    with Image.open(tmp_path / "reconstructed_phase.png") as png:
        assert png.size[1] == 60 and png.size[0] > 80  # the image, then the colour bar
        rgb = np.asarray(png)
        assert "range -0.98" in png.text["Comment"] and "to 1.98" in png.text["Comment"]
    assert not np.array_equal(rgb[0, 0], rgb[-1, 79])  # the ramp is visible
    assert [p.name for p in tmp_path.iterdir()] == ["reconstructed_phase.png"]


def test_png_colour_bar_is_labelled_and_a_scale_bar_drawn_with_a_pixel_size(tmp_path):
    from PIL import Image

    from ptychopinn.io.images import save_image

    image = np.zeros((120, 160))  # black: the white scale bar and the dark labels stand out
    save_image(tmp_path / "plain.png", image, "gray", unit="rad")
    save_image(tmp_path / "scaled.png", image, "gray", unit="rad", pixel_size_m=1e-8)
    with Image.open(tmp_path / "plain.png") as a, Image.open(tmp_path / "scaled.png") as b:
        plain, scaled = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
        assert "rad" in a.text["Comment"] and "pixel size 1e-08 m" in b.text["Comment"]
    bar_end = 160 + 2 + 6  # image, gap, bar (160 // 24 = 6 px)
    labels = plain[:, bar_end + 3 :]
    assert labels.shape[1] > 15 and (labels.sum(axis=2) < 200).sum() > 30  # dark text
    assert not plain[:, :160].any()  # no scale bar without a pixel size
    corner = scaled[60:, :80]  # lower left: a 0.2 um bar (20 px of 10 nm) and its label
    assert (corner.min(axis=2) > 200).sum() > 40


def test_scale_bar_font_draws_the_micro_sign():
    """'µm' labels: the font has a glyph for µ (Pillow's built-in font drew its missing-glyph
    box, the same as for a private-use character)."""
    from ptychopinn.io.images import _font

    font = _font(300)
    micro, missing = font.getmask("µ"), font.getmask("\ue000")
    assert np.asarray(micro).tolist() != np.asarray(missing).tolist()


def test_reconstruction_pngs_take_their_range_from_the_well_lit_region(tmp_path):
    """A barely lit border of extreme values does not set the range, and a phase near pi
    on a steep ramp (the global phase is arbitrary, a ramp is a shift of the diffraction
    centre) is shown without either, so without wraps."""
    from PIL import Image

    from ptychopinn.reconstruction import Reconstruction

    rng = np.random.default_rng(0)
    ramp = 0.3 * np.arange(64)[None, :] - 0.2 * np.arange(64)[:, None]  # many wraps
    phase = np.pi - 0.1 + 0.2 * rng.random((64, 64)) + ramp  # straddles +-pi
    amplitude = np.full((64, 64), 0.9)
    coverage = np.ones((64, 64), dtype=np.float32)
    amplitude[:4], coverage[:4] = 50.0, 1e-3  # the barely lit, wild border
    rec = Reconstruction(
        object=(amplitude * np.exp(1j * phase)).astype(np.complex64), origin_px=(0, 0),
        coverage=coverage, positions_px=np.zeros((1, 2)), N=16,
    )  # fmt: skip
    rec.save(tmp_path)
    with Image.open(tmp_path / "reconstructed_phase.png") as p:
        low, high = (
            float(v) for v in p.text["Comment"].split("range ")[1].split(" rad")[0].split(" to ")
        )
    assert -0.2 < low < high < 0.2
    with Image.open(tmp_path / "reconstructed_amplitude.png") as a:
        assert "to 0.9 " in a.text["Comment"]  # not 50
