"""``ptychopinn live``: a writer drops a scan in pieces (and a broken file) into a directory
while ``live`` runs as a real process; its status page follows, its outputs equal ``infer``'s,
and a real headless browser shows the images."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ptychopinn.io.npz import write_scan_npz


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, tiny_bundle):
    from ptychopinn.bundle import save_bundle

    b = tiny_bundle
    path = tmp_path_factory.mktemp("live") / "wts.h5.zip"
    return save_bundle(path, b.config, b.normalization, b.net, b.probe)


def _start_live(bundle_path: Path, watch: Path, out: Path, *extra: str):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ptychopinn.cli",
            "live",
            "--model_path",
            str(bundle_path),
            "--watch",
            str(watch),
            "--output_dir",
            str(out),
            "--port",
            "0",
            "--linger_s",
            "3",
            "--refine",
            "3",
            *extra,
        ],  # fmt: skip
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"live view at (http://[\d.]+:\d+/)", line)
        if match:
            return proc, match.group(1)
    raise AssertionError(f"live did not start: {proc.wait()}")


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "status.json", timeout=5) as response:
        return json.loads(response.read())


def _drop(directory: Path, name: str, scan) -> None:
    """Write a file under a hidden name, then rename it into place (as writers must)."""
    write_scan_npz(directory / f".{name}", scan)
    os.replace(directory / f".{name}", directory / name)


def test_live_follows_a_scan_written_in_pieces_and_ends_as_infer(
    tmp_path, tiny_scan, bundle_path, run_cli
):
    watch, out = tmp_path / "incoming", tmp_path / "OUT"
    watch.mkdir()
    proc, url = _start_live(bundle_path, watch, out)
    try:
        pieces = np.array_split(np.arange(tiny_scan.n_patterns), 4)
        seen = []
        for k, index in enumerate(pieces):
            _drop(watch, f"part{k}.npz", tiny_scan.subset(index))
            if k == 1:
                (watch / "broken.npz").write_bytes(b"not an npz at all")
            deadline = time.time() + 60
            while _status(url)["patterns"] < sum(len(p) for p in pieces[: k + 1]):
                assert time.time() < deadline, _status(url)
                time.sleep(0.1)
            seen.append(_status(url))
        with urllib.request.urlopen(url + "phase.png", timeout=5) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
        (watch / "END").write_text("")
        deadline = time.time() + 120
        while not _status(url)["done"]:
            assert time.time() < deadline
            time.sleep(0.2)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    status = seen[-1]
    assert status["files"] == 4 and status["patterns"] == tiny_scan.n_patterns
    assert status["latency_s"] is not None and status["patterns_per_s"] > 0
    assert len(status["bad_files"]) == 1 and "broken.npz" in status["bad_files"][0]
    # the final outputs are infer's on the whole scan
    write_scan_npz(tmp_path / "whole.npz", tiny_scan)
    result = run_cli("infer", "--model_path", str(bundle_path), "--data",
                     str(tmp_path / "whole.npz"), "--output_dir", str(tmp_path / "INF"),
                     "--refine", "3", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    live = json.loads((out / "metrics.json").read_text())
    infer = json.loads((tmp_path / "INF" / "metrics.json").read_text())
    assert abs(live["phase_ssim"] - infer["phase_ssim"]) < 0.01


def test_live_refuses_a_missing_directory_with_one_line(tmp_path, bundle_path, run_cli):
    result = run_cli("live", "--model_path", str(bundle_path), "--watch",
                     str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "OUT"),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "needs an existing directory" in result.stderr
    assert not (tmp_path / "OUT").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_the_page_shows_the_images_in_a_real_browser(tmp_path, tiny_scan, bundle_path):
    from PIL import Image

    watch, out = tmp_path / "incoming", tmp_path / "OUT"
    watch.mkdir()
    proc, url = _start_live(bundle_path, watch, out, "--no_live_refinement")
    try:
        _drop(watch, "all.npz", tiny_scan)
        deadline = time.time() + 60
        while _status(url)["patterns"] < tiny_scan.n_patterns:
            assert time.time() < deadline
            time.sleep(0.1)
        shot = tmp_path / "page.png"
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--virtual-time-budget=3000",
                f"--screenshot={shot}",
                "--window-size=1000,700",
                url,
            ],  # fmt: skip
            check=True,
            capture_output=True,
            timeout=120,
        )
        (watch / "END").write_text("")
        proc.wait(timeout=120)
    finally:
        proc.kill()
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    # the images are there: many distinct colours, not a blank page of text
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 500, colours
