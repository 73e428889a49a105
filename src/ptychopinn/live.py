"""``ptychopinn live``: reconstruct a scan while it is measured, and show it in a browser.

The patterns come from a source (:mod:`ptychopinn.streams`): scan files that appear whole in a
watched directory, the rows a growing HDF5 file gains (SWMR), or ZMQ messages. Every arrival is
predicted by the network and stitched, phases synchronised against the canvas so far, onto a
canvas that grows with the scan; while nothing is waiting, refinement passes over all patterns
so far sharpen the picture. A small web server shows both (``/``), with ``/status.json``,
``/phase.png``, ``/amplitude.png`` and ``/coverage.png`` for programs. When the scan ends (the source says so,
``expect`` patterns, or Ctrl-C) the patterns so far are reconstructed exactly as
``ptychopinn infer`` would and written to the output directory. An arrival that cannot be read
is reported on the page and in the log and skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ptychopinn.bundle import Bundle
from ptychopinn.data.dataset import GroupDataset
from ptychopinn.errors import DataError, PtychoPINNError
from ptychopinn.inference import (
    inference_groups,
    predict_patches,
    prepare_network,
    stitch_weights,
    support_window,
)
from ptychopinn.io.growing import GrowingScanWriter, growing_scan_writer
from ptychopinn.io.images import render_png
from ptychopinn.io.scan import ScanData, same_object
from ptychopinn.reconstruction import WELL_LIT, Reconstruction, display_phase
from ptychopinn.stitching import CanvasGeometry, Stitcher
from ptychopinn.streams import Arrival

logger = logging.getLogger(__name__)

#: zlib level of the page's PNGs, redrawn often (fast over small).
PNG_LEVEL = 1
#: While more patterns wait, the page's images are redrawn at most this often (seconds);
#: with nothing waiting they are redrawn at once.
PUBLISH_INTERVAL_S = 0.5
#: The page's images are binned to at most this many pixels on a side (the files are not).
PAGE_MAX_PX = 768
#: The page's coverage image is binned to at most this many pixels on a side.
COVERAGE_MAX_PX = 256
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
        self._lo: np.ndarray | None = None  # the positions' bounding box so far
        self._hi: np.ndarray | None = None

    def warm_up(self) -> None:
        """Pay the one-time costs (the first pass through the network, the phase
        synchronisation's imports) before the first patterns arrive."""
        import scipy.signal  # noqa: F401
        import scipy.sparse.csgraph  # noqa: F401
        import scipy.sparse.linalg  # noqa: F401
        import scipy.spatial  # noqa: F401

        n, c = self.bundle.config.model.N, self.bundle.config.model.gridsize**2
        with torch.inference_mode():
            predict_patches(self.net, torch.zeros(1, c, n, n), self.device, self.precision)

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
        """Grow the canvas to hold ``positions``: to the scan's extent so far plus a quarter
        of it on every side, so that it grows seldom (the margin is taken from the positions,
        not from the canvas, so it does not compound along an axis the scan does not grow)."""
        n = self.bundle.config.model.N
        nearest = np.round(positions)
        low, high = nearest.min(axis=0), nearest.max(axis=0)
        self._lo = low if self._lo is None else np.minimum(self._lo, low)
        self._hi = high if self._hi is None else np.maximum(self._hi, high)
        need = CanvasGeometry.covering(positions, n)
        old = self.stitcher.geometry if self.stitcher is not None else None
        if old is not None and _contains(old, need):
            return
        extent = CanvasGeometry.covering(np.stack([self._lo, self._hi]), n)
        lo, hi = np.array(extent.origin_px), np.array(extent.origin_px) + extent.shape
        margin = np.maximum(n, (hi - lo) // 4)
        lo, hi = lo - margin, hi + margin
        if old is not None:
            lo = np.minimum(lo, old.origin_px)
            hi = np.maximum(hi, np.array(old.origin_px) + old.shape)
        geometry = CanvasGeometry(
            (int(lo[0]), int(lo[1])), (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        )
        if self.stitcher is None:
            self.stitcher = Stitcher(geometry, self.weight, device=self.device)
        else:
            self.stitcher = self.stitcher.grown(geometry)

    def reconstruction(self, positions: np.ndarray) -> Reconstruction | None:
        """The canvas so far, cropped to the patches' footprint (the canvas grows with a
        margin); ``positions`` (M, 2) are every pattern's so far."""
        if self.stitcher is None or self._lo is None or self._hi is None:
            return None
        region = CanvasGeometry.covering(np.stack([self._lo, self._hi]), self.bundle.config.model.N)
        obj, coverage = self.stitcher.result(region=region)
        return Reconstruction(
            object=obj.cpu().numpy().astype(np.complex64, copy=False),
            origin_px=region.origin_px,
            coverage=coverage.cpu().numpy().astype(np.float32, copy=False),
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
    shown: int = 0  # patterns the page's images hold
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
                "shown": self.shown,
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

    def publish(self, rec: Reconstruction, written: float | None = None) -> None:
        """Render the reconstruction's phase and amplitude (the covered region) for the page;
        ``written``: when the oldest patterns new to it were written (``time.time()``).

        A region larger than :data:`PAGE_MAX_PX` is binned (complex mean for the phase, mean
        modulus for the amplitude) so that a redraw costs the same late in a long scan as
        early on; the files written at the end keep every pixel.
        """
        rows, cols = np.nonzero(rec.coverage > 0)
        if rows.size == 0:
            return
        box = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        obj, coverage = rec.object[box], rec.coverage[box]
        amplitude = np.abs(obj)
        size = rec.pixel_size_m
        b = -(-max(obj.shape) // PAGE_MAX_PX)
        if b > 1:
            obj, coverage, amplitude = (_binned(a, b) for a in (obj, coverage, amplitude))
            size = None if size is None else size * b
        top = float(coverage.max())
        lit = coverage >= WELL_LIT * top
        phase = np.where(coverage > 0, display_phase(obj, lit), 0.0)
        # the coverage is smooth: a small image of it is enough
        c = -(-max(coverage.shape) // COVERAGE_MAX_PX)
        small = _binned(coverage, c) if c > 1 else coverage
        images = {
            "phase.png": render_png(phase, "phase", lit, "rad", size, "phase", PNG_LEVEL),
            "amplitude.png": render_png(amplitude, "gray", lit, "", size, "amplitude", PNG_LEVEL),
            "coverage.png": render_png(
                small, "magma", None, "", None if size is None else size * c, "coverage", PNG_LEVEL
            ),
        }
        with self.lock:
            self.images = images
            self.version += 1
            self.shown = int(rec.positions_px.shape[0])
            if written is not None:
                self.latency_s = time.time() - written


def _binned(array: np.ndarray, b: int) -> np.ndarray:
    """Means over b x b blocks (the last rows and columns that do not fill one dropped)."""
    h, w = (array.shape[0] // b) * b, (array.shape[1] // b) * b
    return array[:h, :w].reshape(h // b, b, w // b, b).mean(axis=(1, 3))


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>ptychopinn live</title>
<style>body{font-family:sans-serif;margin:1em}img{image-rendering:pixelated;width:40vw;
min-width:320px;margin-right:1em;border:1px solid #ccc}td{padding:0 1em 0 0}.bad{color:#b00}</style></head>
<body><h2>ptychopinn live</h2>
<table><tr><td>patterns</td><td id="patterns">0</td><td>patterns/s</td><td id="rate">-</td>
<td>latency (written to shown)</td><td id="latency">-</td><td>refinement passes</td>
<td id="passes">0</td><td>state</td><td id="state">waiting</td></tr></table>
<p class="bad" id="bad"></p>
<div><figure style="display:inline-block"><img id="phase" alt="phase"><figcaption>phase (rad)
</figcaption></figure><figure style="display:inline-block"><img id="amplitude" alt="amplitude">
<figcaption>amplitude</figcaption></figure><figure style="display:inline-block">
<img id="coverage" alt="scan coverage" style="width:20vw;min-width:160px"><figcaption>scan
coverage (summed patch weight)</figcaption></figure></div>
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
      for (const name of ['phase', 'amplitude', 'coverage'])
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
            elif path in ("/phase.png", "/amplitude.png", "/coverage.png"):
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


class Spool:
    """Every pattern that arrived, appended to a growing chunked HDF5 scan on disk, so that
    memory stays flat however long the scan runs.

    The first arrival's probe, detector mask, background and pixel size apply to the whole
    scan; a later arrival in other units is refused. Its reference object is kept when every
    arrival carries the same one (a simulated scan, for the metrics).
    """

    def __init__(self, directory: Path):
        self.path = directory / "arrived.h5"
        self._stack = contextlib.ExitStack()
        self._writer: GrowingScanWriter | None = None
        self.first: ScanData | None = None
        self._one_object = True  # every arrival carries the first one's reference object
        self._positions: list[np.ndarray] = []
        self.n_patterns = 0

    def check(self, scan: ScanData) -> None:
        """DataError when ``scan`` cannot join the arrivals so far."""
        first = self.first
        if first is not None and (scan.units != first.units or scan.N != first.N):
            raise DataError(
                f"{scan.source}: {scan.units} of {scan.N} x {scan.N}, but the scan's first "
                f"arrival held {first.units} of {first.N} x {first.N}"
            )

    def add(self, scan: ScanData) -> None:
        self.check(scan)
        if self.first is None:
            self.first = scan
            self._writer = self._stack.enter_context(
                growing_scan_writer(
                    self.path,
                    n=scan.N,
                    dtype=np.float32,
                    units=scan.units,
                    probe=scan.probe,
                    bad_pixels=scan.bad_pixels,
                    pixel_size_m=scan.pixel_size_m,
                    background=scan.background,
                )  # fmt: skip
            )
        else:
            self._one_object = self._one_object and same_object(scan, self.first)
        assert self._writer is not None
        self._writer.append(np.asarray(scan.diffraction[:], dtype=np.float32), scan.positions_px)
        self._positions.append(scan.positions_px)
        self.n_patterns += scan.n_patterns

    @property
    def positions_px(self) -> np.ndarray:
        """(M, 2) every arrived pattern's position (y, x), in arrival order."""
        if len(self._positions) > 1:
            self._positions = [np.concatenate(self._positions)]
        return self._positions[0] if self._positions else np.zeros((0, 2))

    def scan(self) -> ScanData:
        """The patterns so far as one scan, read from the spool as they are needed."""
        assert self.first is not None and self._writer is not None
        return dataclasses.replace(
            self.first,
            diffraction=self._writer.dataset,
            positions_px=self.positions_px,
            nominal_positions_px=None,
            scan_index=None,
            patches=None,
            object=self._reference,
            source=self.scan_name,
        )

    def close(self) -> None:
        """Mark the spool complete and close it (:meth:`scan` then reads nothing)."""
        if self._writer is not None:
            self._writer.finish()
        self._stack.close()
        self._writer = None

    def finished_scan(self) -> ScanData:
        """Close the spool; every arrived pattern as a chunked HDF5 scan read from disk."""
        from ptychopinn.io.hdf5 import read_scan_h5

        if self.first is None:
            raise DataError("the scan ended before any pattern arrived")
        self.close()
        scan = read_scan_h5(self.path)
        return dataclasses.replace(scan, object=self._reference, source=self.scan_name)

    @property
    def _reference(self) -> np.ndarray | None:
        return self.first.object if self.first is not None and self._one_object else None

    @property
    def scan_name(self) -> str:
        return f"{self.first.source if self.first else 'nothing'} and what followed it"


class Source(Protocol):
    """Where the patterns come from (:mod:`ptychopinn.streams`)."""

    def describe(self) -> str: ...

    def poll(self) -> list[Arrival]: ...

    def ended(self) -> bool: ...


@dataclasses.dataclass
class _Progress:
    """The loop's bookkeeping: time spent on patterns, and what the page does not show yet."""

    busy_s: float = 0.0
    published: float = float("-inf")  # perf_counter of the last redraw
    oldest_unshown: float | None = None  # write time of the oldest arrival not drawn yet


def run_live(
    canvas: LiveCanvas,
    source: Source,
    state: LiveState,
    spool: Spool,
    expect: int | None = None,
    poll_s: float = 0.2,
    refine: bool = True,
) -> None:
    """Take, predict, stitch and refine until the scan ends; the patterns go to ``spool``.

    Arrivals are taken one at a time, oldest first, onto ``canvas`` (empty, warmed up). The
    page's images are redrawn after an arrival when nothing else waits, or at least every
    :data:`PUBLISH_INTERVAL_S` while more do; ``latency_s`` runs from the oldest arrival in a
    redraw to the redraw.
    """
    bundle, device = canvas.bundle, canvas.device
    queue: deque[Arrival] = deque()
    progress = _Progress()
    refined_for = 0
    try:
        while True:
            ending = source.ended()  # before polling: what came before the end is taken
            queue.extend(source.poll())
            if queue:
                if not _take(queue.popleft(), canvas, state, progress, spool):
                    continue
                queue.extend(source.poll())
                if not queue or time.perf_counter() - progress.published >= PUBLISH_INTERVAL_S:
                    _redraw(canvas, spool, state, progress)
                continue
            if progress.oldest_unshown is not None:
                _redraw(canvas, spool, state, progress)
            total = spool.n_patterns
            if ending or (expect is not None and total >= expect):
                return
            if refine and total > refined_for:
                refined_for = total
                _refine_block(bundle, spool.scan(), canvas, state, device)
            else:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        logger.info("interrupted: writing what has arrived")


def _take(
    arrival: Arrival, canvas: LiveCanvas, state: LiveState, progress: _Progress, spool: Spool
) -> bool:
    """Read, predict, stitch and spool one arrival (False: it was skipped, and reported)."""
    t0 = time.perf_counter()
    try:
        scan = arrival.read()
        spool.check(scan)
        canvas.add(scan)
    except (PtychoPINNError, OSError, ValueError) as exc:
        logger.warning("%s: skipped (%s)", arrival.name, exc)
        with state.lock:
            state.bad_files.append(f"{arrival.name}: {exc}")
        return False
    spool.add(scan)
    progress.busy_s += time.perf_counter() - t0
    if progress.oldest_unshown is None:
        progress.oldest_unshown = arrival.written
    with state.lock:
        state.patterns += scan.n_patterns
        state.files += 1
        state.patterns_per_s = state.patterns / max(progress.busy_s, 1e-9)
        total = state.patterns
    logger.info(
        "%s: %d patterns (%d so far), %.3f s from writing to canvas (before drawing)",
        arrival.name, scan.n_patterns, total, time.time() - arrival.written,
    )  # fmt: skip
    return True


def _redraw(canvas: LiveCanvas, spool: Spool, state: LiveState, progress: _Progress) -> None:
    """Redraw the page's images from the canvas; the latency of what they now show."""
    t0 = time.perf_counter()
    rec = canvas.reconstruction(spool.positions_px)
    assert rec is not None and spool.first is not None
    state.publish(rec.replace(pixel_size_m=spool.first.pixel_size_m), progress.oldest_unshown)
    progress.published = time.perf_counter()
    progress.busy_s += progress.published - t0
    with state.lock:
        state.patterns_per_s = state.patterns / max(progress.busy_s, 1e-9)
    progress.oldest_unshown = None


def _refine_block(
    bundle: Bundle, scan: ScanData, canvas: LiveCanvas, state: LiveState, device: Any
) -> None:
    """A few refinement passes over every pattern so far, from the network's canvas."""
    from ptychopinn.refinement import refine
    from ptychopinn.workflows import refine_options

    start = canvas.reconstruction(scan.positions_px)
    options = refine_options(bundle, start, REFINE_PASSES_PER_BLOCK, refine_probe=False)
    rec, _, _ = refine(
        scan, bundle.probe, bundle.normalization.for_scan(scan), start, options, device
    )
    state.publish(rec.replace(pixel_size_m=scan.pixel_size_m))
    with state.lock:
        state.refine_passes += REFINE_PASSES_PER_BLOCK
