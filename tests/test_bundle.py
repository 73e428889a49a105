"""The wts.h5.zip bundle: identity through a fresh process, and every refusal of docs/data_format.md."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from ptychopinn.bundle import FORMAT_VERSION, load_bundle, save_bundle
from ptychopinn.config import Config, ModelConfig
from ptychopinn.data.dataset import Normalization
from ptychopinn.errors import BundleError
from ptychopinn.models.cnn import PtychoPINNNet


def _bundle(tmp_path, gridsize=1, name="wts.h5.zip"):
    torch.manual_seed(0)
    config = Config(
        model=ModelConfig(N=32, gridsize=gridsize, n_filters_scale=0.25, architecture="ptychopinn")
    )
    net = PtychoPINNNet(config.model)
    probe = torch.polar(torch.rand(2, 32, 32), torch.rand(2, 32, 32))
    norm = Normalization(N=32, amplitude_factor=0.1, nphotons=1e5, probe_power=3.0)
    path = save_bundle(tmp_path / name, config, norm, net, probe)
    return path, net, probe


def test_roundtrip_same_process(tmp_path):
    path, net, probe = _bundle(tmp_path)
    bundle = load_bundle(path)
    assert torch.equal(bundle.probe, probe.to(torch.complex64))
    assert bundle.manifest["backend"] == "pytorch"
    assert bundle.manifest["format_version"] == FORMAT_VERSION
    x = torch.rand(3, 1, 32, 32)
    net.eval()
    with torch.no_grad():
        a = net(x)
        b = bundle.net(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # a run directory works as well as the file
    assert load_bundle(tmp_path).config == bundle.config


def test_roundtrip_fresh_process_is_identical(tmp_path):
    path, net, _ = _bundle(tmp_path, gridsize=2)
    x = torch.rand(2, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.save(x, tmp_path / "x.pt")
    net.eval()
    # one thread on both sides: bit-identical results need the same reduction order, which a
    # multi-threaded convolution need not keep between processes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            amp, phase = net(x)
    finally:
        torch.set_num_threads(threads)
    code = (
        "import sys, torch; from ptychopinn.bundle import load_bundle; torch.set_num_threads(1);"
        f"b = load_bundle({str(path)!r}); x = torch.load({str(tmp_path / 'x.pt')!r});"
        "a, p = b.net(x); torch.save((a.detach(), p.detach()), sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.pt")], check=True)
    amp2, phase2 = torch.load(tmp_path / "out.pt")
    assert torch.equal(amp, amp2) and torch.equal(phase, phase2)


def _rewrite(src, dst, mutate):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        members = {n: zin.read(n) for n in zin.namelist()}
        mutate(members)
        for name, data in members.items():
            zout.writestr(name, data)


def _manifest(version=None, backend=None):
    def mutate(members):
        manifest = json.loads(members["manifest.json"])
        if version is not None:
            manifest["format_version"] = version
        if backend is not None:
            manifest["backend"] = backend
        members["manifest.json"] = json.dumps(manifest)

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.update({"manifest.dill": b"x", "model.keras": b"y"}), "TensorFlow"),
        (lambda m: m.update({"../evil.py": b"print(1)"}), "unsafe member path"),
        (lambda m: m.update({"/abs/evil": b""}), "unsafe member path"),
        (_manifest(version=FORMAT_VERSION + 1), "newer than this ptychopinn"),
        (_manifest(backend="tensorflow"), "backend"),
        (lambda m: m.pop("weights.safetensors"), "missing"),
        (lambda m: m.update({"weights.pkl": b"\x80\x04"}), "unexpected member"),
        (lambda m: m.update({"config.json": b"{not json"}), "not valid JSON"),
        (lambda m: m.update({"weights.safetensors": b"garbage"}), "damaged bundle"),
    ],
)
def test_bad_bundles_are_refused(tmp_path, mutate, message):
    path, _, _ = _bundle(tmp_path)
    bad = tmp_path / "bad.zip"
    _rewrite(path, bad, mutate)
    with pytest.raises(BundleError, match=message):
        load_bundle(bad)


def test_weights_for_another_network_are_refused(tmp_path):
    path, _, _ = _bundle(tmp_path)
    other, _, _ = _bundle(tmp_path, gridsize=2, name="g2.zip")

    def swap(members):
        with zipfile.ZipFile(other) as z:
            members["weights.safetensors"] = z.read("weights.safetensors")

    bad = tmp_path / "bad.zip"
    _rewrite(path, bad, swap)
    with pytest.raises(BundleError, match="weights do not fit"):
        load_bundle(bad)


def test_not_a_zip_and_truncated(tmp_path):
    path, _, _ = _bundle(tmp_path)
    (tmp_path / "plain.zip").write_text("hello")
    with pytest.raises(BundleError, match="not a zip"):
        load_bundle(tmp_path / "plain.zip")
    data = path.read_bytes()
    (tmp_path / "trunc.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "trunc.zip")
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "missing.zip")


def test_zip_bomb_is_refused(tmp_path):
    path, _, _ = _bundle(tmp_path)
    bomb = tmp_path / "bomb.zip"

    def inflate(members):
        members["config.json"] = b" " * (900 * 1024)

    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        members = {n: zin.read(n) for n in zin.namelist()}
        inflate(members)
        for name, data in members.items():
            zout.writestr(name, data)
    with pytest.raises(BundleError, match="zip bomb"):
        load_bundle(bomb)


def test_check_compatible(tmp_path):
    path, _, _ = _bundle(tmp_path)
    bundle = load_bundle(path)
    with pytest.raises(BundleError, match="gridsize = 1; the request has gridsize = 2"):
        bundle.check_compatible(gridsize=2)
    with pytest.raises(BundleError, match="N = 32; the request has N = 64"):
        bundle.check_compatible(N=64)
    assert np.isfinite(bundle.normalization.intensity_scale)
