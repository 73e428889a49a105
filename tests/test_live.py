"""``ptychopinn live``: a writer feeds a scan in pieces (and a broken piece) while ``live`` runs
as a real process, through each source (files in a directory, a growing HDF5 file in SWMR
mode, a ZMQ stream); its status page follows, its outputs equal ``infer``'s, and a real
headless browser shows the images."""

from __future__ import annotations

import dataclasses
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


@pytest.fixture(scope="module")
def infer_metrics(tmp_path_factory, tiny_scan, bundle_path, run_cli) -> dict:
    """``infer``'s metrics on the whole of ``tiny_scan`` (what live must end with)."""
    tmp = tmp_path_factory.mktemp("infer")
    write_scan_npz(tmp / "whole.npz", tiny_scan)
    result = run_cli("infer", "--model_path", str(bundle_path), "--data", str(tmp / "whole.npz"),
                     "--output_dir", str(tmp / "INF"), "--refine", "3", cwd=tmp)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {
        **json.loads((tmp / "INF" / "metrics.json").read_text()),
        "object": np.load(tmp / "INF" / "reconstruction.npz")["object"],
    }


def _same_as_infer(out: Path, infer_metrics: dict) -> None:
    """live's final object is infer's on the whole scan (to float rounding: the patterns came
    as integers in another container)."""
    live, infer = np.load(out / "reconstruction.npz")["object"], infer_metrics["object"]
    assert live.shape == infer.shape
    assert np.abs(live - infer).max() < 1e-3 * np.abs(infer).max()


def _start_live(bundle_path: Path, watch: Path | None, out: Path, *extra: str):
    source = ["--watch", str(watch)] if watch is not None else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ptychopinn.cli",
            "live",
            "--model_path",
            str(bundle_path),
            *source,
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
    tmp_path, tiny_scan, bundle_path, infer_metrics
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
                # amplitudes after counts: the scan's patterns cannot mix units
                first = tiny_scan.subset(pieces[0])
                amplitudes = np.sqrt(np.asarray(first.diffraction, dtype=np.float32))
                _drop(watch, "amplitudes.npz", dataclasses.replace(
                    first, diffraction=amplitudes, units="amplitude"))  # fmt: skip
            deadline = time.time() + 60
            while _status(url)["patterns"] < sum(len(p) for p in pieces[: k + 1]):
                assert time.time() < deadline, _status(url)
                time.sleep(0.1)
            seen.append(_status(url))
        for image in ("phase.png", "amplitude.png", "coverage.png"):
            with urllib.request.urlopen(url + image, timeout=5) as response:
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
    assert len(status["bad_files"]) == 2 and "broken.npz" in status["bad_files"][0]
    assert (
        "amplitude" in status["bad_files"][1]
        and "first arrival held counts" in (status["bad_files"][1])
    )
    # the final outputs are infer's on the whole scan
    live = json.loads((out / "metrics.json").read_text())
    assert abs(live["phase_ssim"] - infer_metrics["phase_ssim"]) < 0.01


def _wait_done(url: str, proc, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while not (status := _status(url))["done"]:
        assert time.time() < deadline, status
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    assert proc.wait(timeout=60) == 0
    return status


def test_live_follows_a_growing_hdf5_file_in_swmr_mode(
    tmp_path, tiny_scan, bundle_path, infer_metrics
):
    """The acquisition appends rows to one HDF5 file that live reads as it grows (SWMR);
    the file appears after live has started; its complete flag ends the scan."""
    from ptychopinn.io.growing import growing_scan_writer

    path, out = tmp_path / "scan.h5", tmp_path / "OUT"
    proc, url = _start_live(bundle_path, path, out, "--no_live_refinement")
    counts = np.asarray(tiny_scan.diffraction).round().astype(np.uint32)
    try:
        with growing_scan_writer(
            path, n=tiny_scan.N, dtype=np.uint32, units="counts", probe=tiny_scan.probe
        ) as writer:
            for index in np.array_split(np.arange(tiny_scan.n_patterns), 3):
                writer.append(counts[index], tiny_scan.positions_px[index])
                deadline = time.time() + 60
                while _status(url)["patterns"] < index[-1] + 1:
                    assert time.time() < deadline, _status(url)
                    time.sleep(0.05)
            writer.finish()
            status = _wait_done(url, proc)
    finally:
        proc.kill()
    assert status["patterns"] == tiny_scan.n_patterns and status["files"] == 3
    _same_as_infer(out, infer_metrics)


def test_live_reads_a_zmq_stream_and_reports_a_broken_message(
    tmp_path, tiny_scan, bundle_path, infer_metrics
):
    zmq = pytest.importorskip("zmq")
    from ptychopinn.streams import end_message, frames_message, start_message

    socket = zmq.Context.instance().socket(zmq.PUSH)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    out = tmp_path / "OUT"
    proc, url = _start_live(bundle_path, None, out, "--zmq", f"tcp://127.0.0.1:{port}")
    try:
        socket.send_multipart(start_message(probe=tiny_scan.probe, units="counts"))
        counts = np.asarray(tiny_scan.diffraction).round().astype(np.uint16)
        for k, index in enumerate(np.array_split(np.arange(tiny_scan.n_patterns), 4)):
            socket.send_multipart(frames_message(counts[index], tiny_scan.positions_px[index]))
            if k == 1:  # a header that promises more bytes than the frame holds
                bad = frames_message(counts[index], tiny_scan.positions_px[index])
                socket.send_multipart([bad[0], bad[1][:100]])
        socket.send_multipart(end_message())
        status = _wait_done(url, proc)
    finally:
        proc.kill()
        socket.close(linger=0)
    assert status["patterns"] == tiny_scan.n_patterns and status["files"] == 4
    assert len(status["bad_files"]) == 1 and "bytes, expected" in status["bad_files"][0]
    _same_as_infer(out, infer_metrics)


def test_live_refuses_a_finished_scan_file_as_a_growing_one(
    tmp_path, tiny_scan, bundle_path, run_cli
):
    from ptychopinn.io.hdf5 import write_scan_h5

    write_scan_h5(tmp_path / "done.h5", tiny_scan)
    old = time.time() - 60  # not a file a writer is still setting up
    os.utime(tmp_path / "done.h5", (old, old))
    result = run_cli("live", "--model_path", str(bundle_path), "--watch",
                     str(tmp_path / "done.h5"), "--output_dir", str(tmp_path / "OUT"),
                     "--port", "0", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "not a growing scan" in result.stderr and "ptychopinn infer" in result.stderr
    assert not (tmp_path / "OUT").exists()


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
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int64).reshape(-1, 3)
    # the images are there, not a blank page of text (whose antialiased letters give some
    # 5,000 mid-grey pixels and a few hundred coloured ones): the phase in many colours over
    # a large area, the amplitude in mid greys over a large area
    span = pixels.max(axis=1) - pixels.min(axis=1)
    colours = len(np.unique(pixels[span > 30], axis=0))
    coloured = int(np.count_nonzero(span > 30))
    grey = int(np.count_nonzero((span <= 2) & (pixels[:, 0] > 30) & (pixels[:, 0] < 225)))
    assert colours > 150 and coloured > 20_000 and grey > 20_000, (colours, coloured, grey)


def test_the_live_canvas_grows_with_the_scan_not_with_its_own_margins(tiny_scan, tiny_bundle):
    """A raster scanned row by row grows the canvas downwards; its width stays the scan's
    width plus one margin (margins once compounded on every growth, wasting memory)."""
    from ptychopinn.live import LiveCanvas

    canvas = LiveCanvas(tiny_bundle, "cpu", "32", 16)
    cols = np.arange(0, 400, 5.0)
    n = tiny_scan.N
    for row in range(12):
        positions = np.stack([np.full(cols.size, 40.0 + 8 * row), 40.0 + cols], axis=1)
        index = np.arange(cols.size) % tiny_scan.n_patterns
        part = dataclasses.replace(tiny_scan.subset(index), object=None, patches=None)
        canvas.add(dataclasses.replace(part, positions_px=positions))
    assert canvas.stitcher is not None
    height, width = canvas.stitcher.geometry.shape
    span = 400 + n + 2  # the patches' extent along a row
    assert width <= span + 2 * (span // 4) + 2, (width, span)
    assert height >= 8 * 11 + n
