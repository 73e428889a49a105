"""``ptychopinn live``: reconstruct a scan while it is measured, and show it in a browser.

Scan files (scan NPZ, chunked HDF5, CXI: whatever ``read_scan`` reads) appear in a watched
directory as the acquisition writes them, each holding the next patterns and their positions.
Every file is predicted by the network and stitched, phases synchronised against the canvas
so far, onto a canvas that grows with the scan; between files, refinement passes over all
patterns so far sharpen the picture. A small web server shows both (``/``), with
``/status.json``, ``/phase.png`` and ``/amplitude.png`` for programs. When the scan ends (a
file named ``END`` in the directory, ``expect`` patterns, or Ctrl-C) the patterns so far are
reconstructed exactly as ``ptychopinn infer`` would and written to the output directory.

Writers must make each file appear whole: write it under a name starting with ``.`` (or
ending in ``.part``/``.tmp``) and rename it. A file that cannot be read is reported on the page
and in the log and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychopinn.bundle import Bundle
from ptychopinn.data.dataset import GroupDataset
from ptychopinn.errors import ConfigError, PtychoPINNError
from ptychopinn.inference import (
    inference_groups,
    predict_patches,
    prepare_network,
    stitch_weights,
    support_window,
)
from ptychopinn.io.images import render_png
from ptychopinn.io.scan import ScanData, concatenate
from ptychopinn.reconstruction import Reconstruction, display_phase
from ptychopinn.stitching import CanvasGeometry, Stitcher

logger = logging.getLogger(__name__)

SCAN_SUFFIXES = (".npz", ".h5", ".hdf5", ".cxi")
END_MARKER = "END"
#: zlib level of the page's PNGs, redrawn for every batch of files (fast over small).
PNG_LEVEL = 1
#: Refinement passes run per block between files.
REFINE_PASSES_PER_BLOCK = 2


class LiveCanvas:
    """The network's stitched object of the patterns so far, on a canvas that grows."""

    def __init__(self, bundle: Bundle, device: torch.device | str, precision: Any, batch: int):
        self.bundle, self.device, self.precision, self.batch = bundle, device, precision, batch
        self.net = prepare_network(bundle, device)
        self.window = support_window(bundle)
        self.weight = stitch_weights(bundle, "probe")[self.window, self.window]
        self.stitcher: Stitcher | None = None

    def add(self, scan: ScanData) -> None:
        """Predict the scan's patterns and stitch them (phases synchronised to the canvas)."""
        self.bundle.check_compatible(N=scan.N, source=scan.source)
        normalization = self.bundle.normalization.for_scan(scan)
        groups = inference_groups(self.bundle, scan, None)
        dataset = GroupDataset(scan, groups, normalization, cache=False)
        amplitude = dataset.group_amplitudes(np.arange(len(groups)))
        out = []
        with torch.inference_mode():
            for start in range(0, amplitude.shape[0], self.batch):
                block = amplitude[start : start + self.batch]
                patches = predict_patches(self.net, block, self.device, self.precision)
                patches = patches[..., self.window, self.window]
                out.append(patches.reshape(-1, *patches.shape[-2:]).cpu())
            positions = scan.positions_px[groups.indices.reshape(-1)]
            self._cover(positions)
            assert self.stitcher is not None
            self.stitcher.add_synchronized(torch.cat(out), positions)

    def _cover(self, positions: np.ndarray) -> None:
        """Grow the canvas (by a margin, so that it grows seldom) to hold ``positions``."""
        n = self.bundle.config.model.N
        need = CanvasGeometry.covering(positions, n)
        old = self.stitcher.geometry if self.stitcher is not None else None
        if old is not None and _contains(old, need):
            return
        lo, hi = np.array(need.origin_px), np.array(need.origin_px) + need.shape
        if old is not None:
            lo = np.minimum(lo, old.origin_px)
            hi = np.maximum(hi, np.array(old.origin_px) + old.shape)
        margin = np.maximum(n, (hi - lo) // 4)
        lo, hi = lo - margin, hi + margin
        geometry = CanvasGeometry(
            (int(lo[0]), int(lo[1])), (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        )
        if self.stitcher is None:
            self.stitcher = Stitcher(geometry, self.weight, device=self.device)
        else:
            self.stitcher = self.stitcher.grown(geometry)

    def reconstruction(self, positions: np.ndarray) -> Reconstruction | None:
        if self.stitcher is None:
            return None
        obj, coverage = self.stitcher.result()
        return Reconstruction(
            object=obj.cpu().numpy().astype(np.complex64),
            origin_px=self.stitcher.geometry.origin_px,
            coverage=coverage.cpu().numpy().astype(np.float32),
            positions_px=positions,
            N=self.bundle.config.model.N,
        )


def _contains(outer: CanvasGeometry, inner: CanvasGeometry) -> bool:
    return all(
        outer.origin_px[i] <= inner.origin_px[i]
        and inner.origin_px[i] + inner.shape[i] <= outer.origin_px[i] + outer.shape[i]
        for i in (0, 1)
    )


@dataclasses.dataclass
class LiveState:
    """What the page shows; every field read and written under ``lock``."""

    patterns: int = 0
    files: int = 0
    bad_files: list[str] = dataclasses.field(default_factory=list)
    patterns_per_s: float = 0.0
    latency_s: float | None = None
    refine_passes: int = 0
    done: bool = False
    output_dir: str = ""
    started: float = dataclasses.field(default_factory=time.time)
    images: dict[str, bytes] = dataclasses.field(default_factory=dict)
    version: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "patterns": self.patterns,
                "patterns_per_s": round(self.patterns_per_s, 1),
                "latency_s": None if self.latency_s is None else round(self.latency_s, 3),
                "refine_passes": self.refine_passes,
                "done": self.done,
                "files": self.files,
                "bad_files": list(self.bad_files),
                "elapsed_s": round(time.time() - self.started, 1),
                "version": self.version,
                "output_dir": self.output_dir,
            }

    def publish(self, rec: Reconstruction) -> None:
        """Render the reconstruction's phase and amplitude (the covered region) for the page."""
        rows, cols = np.nonzero(rec.coverage > 0)
        if rows.size == 0:
            return
        box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        lit = rec.well_lit()[box]
        phase = np.where(rec.coverage[box] > 0, display_phase(rec.object[box], lit), 0.0)
        size = rec.pixel_size_m
        images = {
            "phase.png": render_png(phase, "twilight", lit, "rad", size, "phase", PNG_LEVEL),
            "amplitude.png": render_png(
                rec.amplitude[box], "gray", lit, "", size, "amplitude", PNG_LEVEL
            ),
        }
        with self.lock:
            self.images = images
            self.version += 1


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ptychopinn live</title>
<style>body{font-family:sans-serif;margin:1em}img{image-rendering:pixelated;width:40vw;
min-width:320px;margin-right:1em;border:1px solid #ccc}td{padding:0 1em 0 0}.bad{color:#b00}</style></head>
<body><h2>ptychopinn live</h2>
<table><tr><td>patterns</td><td id="patterns">0</td><td>patterns/s</td><td id="rate">-</td>
<td>latency (file to canvas)</td><td id="latency">-</td><td>refinement passes</td>
<td id="passes">0</td><td>state</td><td id="state">waiting</td></tr></table>
<p class="bad" id="bad"></p>
<div><figure style="display:inline-block"><img id="phase" alt="phase"><figcaption>phase (rad)
</figcaption></figure><figure style="display:inline-block"><img id="amplitude" alt="amplitude">
<figcaption>amplitude</figcaption></figure></div>
<script>
let shown = -1;
async function tick() {
  try {
    const s = await (await fetch('/status.json', {cache: 'no-store'})).json();
    document.getElementById('patterns').textContent = s.patterns;
    document.getElementById('rate').textContent = s.patterns_per_s;
    document.getElementById('latency').textContent = s.latency_s === null ? '-' : s.latency_s + ' s';
    document.getElementById('passes').textContent = s.refine_passes;
    document.getElementById('state').textContent = s.done ? 'done: ' + s.output_dir : 'scanning';
    document.getElementById('bad').textContent = s.bad_files.length ?
      'skipped: ' + s.bad_files.join('; ') : '';
    if (s.version !== shown && s.version > 0) {
      shown = s.version;
      for (const name of ['phase', 'amplitude'])
        document.getElementById(name).src = '/' + name + '.png?v=' + s.version;
    }
    if (s.done) return;
  } catch (e) {}
  setTimeout(tick, 500);
}
tick();
</script></body></html>
"""


def serve(state: LiveState, host: str, port: int) -> ThreadingHTTPServer:
    """Start the page's HTTP server in a daemon thread (``port`` 0: any free port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, "text/html; charset=utf-8", PAGE.encode())
            elif path == "/status.json":
                self._send(200, "application/json", json.dumps(state.status()).encode())
            elif path in ("/phase.png", "/amplitude.png"):
                with state.lock:
                    data = state.images.get(path[1:])
                if data is None:
                    self._send(404, "text/plain", b"no patterns yet\n")
                else:
                    self._send(200, "image/png", data)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Watcher:
    """New whole scan files in a directory, oldest first; the end marker."""

    def __init__(self, directory: Path):
        if not directory.is_dir():
            raise ConfigError(f"{directory}: --watch needs an existing directory")
        self.directory = directory
        self.seen: set[str] = set()

    def new_files(self) -> list[Path]:
        found = []
        for path in self.directory.iterdir():
            name = path.name
            if name in self.seen or name.startswith(".") or name.endswith((".part", ".tmp")):
                continue
            if path.suffix in SCAN_SUFFIXES and path.is_file():
                found.append(path)
        found.sort(key=lambda p: (p.stat().st_mtime, p.name))
        self.seen.update(p.name for p in found)
        return found

    def ended(self) -> bool:
        return (self.directory / END_MARKER).exists()


def run_live(
    bundle: Bundle,
    watcher: Watcher,
    state: LiveState,
    read: Callable[[Path], ScanData],
    device: torch.device | str,
    precision: Any,
    batch: int,
    expect: int | None = None,
    poll_s: float = 0.2,
    refine: bool = True,
) -> list[ScanData]:
    """Watch, predict, stitch and refine until the scan ends; returns the scans read."""
    canvas = LiveCanvas(bundle, device, precision, batch)
    scans: list[ScanData] = []
    refined_for = 0
    busy_s = 0.0
    try:
        while True:
            files = watcher.new_files()
            written = time.time()
            for path in files:
                t0 = time.perf_counter()
                try:
                    scan = read(path)
                    canvas.add(scan)
                except (PtychoPINNError, OSError, ValueError) as exc:
                    logger.warning("%s: skipped (%s)", path.name, exc)
                    with state.lock:
                        state.bad_files.append(f"{path.name}: {exc}")
                    continue
                scans.append(scan)
                busy_s += time.perf_counter() - t0
                written = path.stat().st_mtime
                latency = time.time() - written
                with state.lock:
                    state.patterns += scan.n_patterns
                    state.files += 1
                    state.latency_s = latency
                    state.patterns_per_s = state.patterns / max(busy_s, 1e-9)
                logger.info(
                    "%s: %d patterns (%d so far), %.3f s from file to canvas (before drawing)",
                    path.name, scan.n_patterns, state.patterns, latency,
                )  # fmt: skip
            if files and scans:  # the page's images: once per batch of files
                t0 = time.perf_counter()
                positions = np.concatenate([s.positions_px for s in scans])
                rec = canvas.reconstruction(positions)
                assert rec is not None
                state.publish(rec.replace(pixel_size_m=scans[-1].pixel_size_m))
                busy_s += time.perf_counter() - t0
                with state.lock:  # to the image on the page
                    state.latency_s = time.time() - written
                    state.patterns_per_s = state.patterns / max(busy_s, 1e-9)
            total = sum(s.n_patterns for s in scans)
            if watcher.ended() or (expect is not None and total >= expect):
                return scans
            if not files and refine and scans and total > refined_for:
                refined_for = total
                _refine_block(bundle, scans, canvas, state, device)
            elif not files:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        logger.info("interrupted: writing what has arrived")
        return scans


def _refine_block(
    bundle: Bundle, scans: list[ScanData], canvas: LiveCanvas, state: LiveState, device: Any
) -> None:
    """A few refinement passes over every pattern so far, from the network's canvas."""
    from ptychopinn.refinement import refine
    from ptychopinn.workflows import refine_options

    scan = concatenate(scans)
    start = canvas.reconstruction(scan.positions_px)
    options = refine_options(bundle, start, REFINE_PASSES_PER_BLOCK, refine_probe=False)
    rec, _, _ = refine(
        scan, bundle.probe, bundle.normalization.for_scan(scan), start, options, device
    )
    state.publish(rec.replace(pixel_size_m=scan.pixel_size_m))
    with state.lock:
        state.refine_passes += REFINE_PASSES_PER_BLOCK
