"""Where ``ptychopinn live`` takes its patterns from: a directory of scan files, one growing
HDF5 file (SWMR), or a ZMQ stream.

Each source is polled; what arrived since the last poll comes back as :class:`Arrival` items
in order, each read when ``live`` is ready for it. A source also says when the scan has ended.

ZMQ messages
------------
``live --zmq ADDR`` connects a PULL socket to ``ADDR`` (``--zmq_bind``: binds it) and reads
multipart messages whose first frame is a UTF-8 JSON header:

* ``{"msg": "start", "units": "counts", "pixel_size_m": 1e-8, "probe": {"shape": [P, N, N]},
  "bad_pixels": {"shape": [N, N]}}`` (all keys but ``msg`` optional), then one binary frame
  for each of ``probe`` (complex64, C order) and ``bad_pixels`` (uint8, non-zero = bad), in
  that order, for those named. Without a start message (or a probe in it) the model's
  training probe is used, at the training scan's scale.
* ``{"msg": "frames", "shape": [B, N, N], "dtype": "uint32", "x": [...], "y": [...],
  "time": t}``, then one frame of B patterns (C order, ``dtype``, DC at the centre); ``x``
  and ``y`` are the B positions in object pixels (as ``xcoords``/``ycoords``); ``time``
  (optional) is the sender's ``time.time()`` when the patterns were taken, the start of
  the latency shown (the arrival otherwise).
* ``{"msg": "end"}``: the scan is over.

:func:`start_message`, :func:`frames_message` and :func:`end_message` build them.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychopinn.errors import ConfigError, DataError
from ptychopinn.io.growing import GrowingScanReader
from ptychopinn.io.npz import UnitsRequest, scan_from_arrays
from ptychopinn.io.scan import ScanData

SCAN_SUFFIXES = (".npz", ".h5", ".hdf5", ".cxi")
END_MARKER = "END"
#: ZMQ messages taken per poll at most (the rest wait for the next).
ZMQ_MESSAGES_PER_POLL = 64


@dataclass(frozen=True)
class Arrival:
    """Patterns that arrived: a name for the log and the page, when they were written (the
    start of the latency, ``time.time()``), and how to read them (may raise DataError)."""

    name: str
    written: float
    read: Callable[[], ScanData]


class Directory:
    """New whole scan files in a directory, oldest first; a file named ``END`` ends the scan."""

    def __init__(self, directory: Path, read: Callable[[Path], ScanData]):
        if not directory.is_dir():
            raise ConfigError(f"{directory}: --watch needs an existing directory")
        self.directory, self._read = directory, read
        self.seen: set[str] = set()

    def describe(self) -> str:
        return f"watching {self.directory}"

    def poll(self) -> list[Arrival]:
        found = []
        for path in self.directory.iterdir():
            name = path.name
            if name in self.seen or name.startswith(".") or name.endswith((".part", ".tmp")):
                continue
            if path.suffix in SCAN_SUFFIXES and path.is_file():
                found.append((path.stat().st_mtime, path))
        found.sort(key=lambda item: (item[0], item[1].name))
        self.seen.update(p.name for _, p in found)
        return [Arrival(p.name, t, functools.partial(self._read, p)) for t, p in found]

    def ended(self) -> bool:
        return (self.directory / END_MARKER).exists()

    def close(self) -> None:
        pass


class GrowingFile:
    """New rows of one growing HDF5 scan, read in SWMR mode (:mod:`ptychopinn.io.growing`).

    The file may appear after ``live`` starts; the scan ends when the writer sets
    ``scan_complete`` (and every row has been read).
    """

    def __init__(self, path: Path, units: UnitsRequest = "auto", rows_per_block: int = 1024):
        if not path.parent.is_dir():
            raise ConfigError(f"{path}: --watch: its directory {path.parent} does not exist")
        self.reader = GrowingScanReader(path, units, max_rows=rows_per_block)

    def describe(self) -> str:
        return f"following {self.reader.path} (SWMR)"

    def poll(self) -> list[Arrival]:
        if not self.reader.open():
            return []
        written = self.reader.path.stat().st_mtime
        name = self.reader.path.name
        return [
            Arrival(
                f"{name}[{rows.start}:{rows.stop}]",
                written,
                functools.partial(self.reader.read, rows),
            )
            for rows in self.reader.new_blocks()
        ]

    def ended(self) -> bool:
        return self.reader.complete()

    def close(self) -> None:
        self.reader.close()


def _same(scan: ScanData) -> ScanData:
    return scan


class ZmqStream:
    """Patterns from ZMQ messages (see the module docstring for the layout)."""

    def __init__(self, address: str, default_probe: np.ndarray, bind: bool = False):
        try:
            import zmq
        except ImportError as exc:
            raise ConfigError("--zmq needs pyzmq: pip install pyzmq (or ptychopinn[live])") from exc
        self._zmq = zmq
        self._context: Any = zmq.Context.instance()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            (self._socket.bind if bind else self._socket.connect)(address)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise ConfigError(f"--zmq {address}: {exc}") from exc
        self.address, self.bind = address, bind
        self._fixed: dict[str, Any] = {"probeGuess": default_probe}
        self._units: UnitsRequest = "auto"
        self._ended = False
        self._count = 0

    def describe(self) -> str:
        return f"{'bound to' if self.bind else 'connected to'} {self.address} (ZMQ PULL)"

    def poll(self) -> list[Arrival]:
        arrivals: list[Arrival] = []
        for _ in range(ZMQ_MESSAGES_PER_POLL):
            try:
                parts = self._socket.recv_multipart(flags=self._zmq.NOBLOCK, copy=True)
            except self._zmq.Again:
                break
            arrival = self._message(parts)
            if arrival is not None:
                arrivals.append(arrival)
            if self._ended:
                break
        return arrivals

    def _message(self, parts: list[bytes]) -> Arrival | None:
        received = time.time()
        self._count += 1
        name = f"message {self._count}"
        try:
            header = json.loads(parts[0].decode("utf-8"))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
            kind = header.get("msg")
            if kind == "end":
                self._ended = True
                return None
            if kind == "start":
                self._start(header, parts[1:])
                return None
            if kind != "frames":
                raise ValueError(f"msg: expected 'start', 'frames' or 'end', got {kind!r}")
            scan = self._frames(header, parts[1:], name)
        except (ValueError, TypeError, KeyError, AttributeError, DataError) as exc:
            error = DataError(f"{name}: {exc}")
            return Arrival(name, received, functools.partial(_raise, error))
        written = header.get("time")
        written = float(written) if isinstance(written, (int, float)) else received
        return Arrival(
            f"{name} ({scan.n_patterns} patterns)", written, functools.partial(_same, scan)
        )

    def _start(self, header: dict[str, Any], frames: list[bytes]) -> None:
        fixed = dict(self._fixed)
        frames = list(frames)
        for key, field, dtype in (
            ("probe", "probeGuess", np.complex64),
            ("bad_pixels", "bad_pixels", np.uint8),
        ):
            if key in header:
                if not frames:
                    raise ValueError(f"start: '{key}' named but its frame is missing")
                fixed[field] = _array(frames.pop(0), header[key].get("shape"), dtype, key)
        if "bad_pixels" in fixed:
            fixed["bad_pixels"] = fixed["bad_pixels"].astype(bool)
        if "pixel_size_m" in header:
            fixed["pixel_size_m"] = float(header["pixel_size_m"])
        units = header.get("units", "auto")
        if units not in ("auto", "counts", "amplitude"):
            raise ValueError(f"units: expected 'counts' or 'amplitude', got {units!r}")
        self._fixed, self._units = fixed, units

    def _frames(self, header: dict[str, Any], frames: list[bytes], name: str) -> ScanData:
        if len(frames) != 1:
            raise ValueError(f"expected one frame of patterns after the header, got {len(frames)}")
        patterns = _array(frames[0], header.get("shape"), header.get("dtype"), "patterns")
        arrays = {
            "diffraction": patterns,
            "xcoords": np.asarray(header["x"], dtype=np.float64),
            "ycoords": np.asarray(header["y"], dtype=np.float64),
            **self._fixed,
        }
        return scan_from_arrays(arrays, f"{self.address} {name}", self._units)

    def ended(self) -> bool:
        return self._ended

    def close(self) -> None:
        self._socket.close()


def _raise(error: Exception) -> ScanData:
    raise error


def _array(frame: bytes, shape: Any, dtype: Any, what: str) -> np.ndarray:
    """A frame's bytes as an array of ``shape`` and ``dtype`` (ValueError if they disagree)."""
    if dtype is None:
        raise ValueError(f"{what}: dtype: missing")
    dtype = np.dtype(dtype)
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"{what}: shape: expected a list of sizes, got {shape!r}")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(frame) != expected:
        raise ValueError(
            f"{what}: {len(frame)} bytes, expected {expected} for shape {shape} of {dtype}"
        )
    return np.frombuffer(frame, dtype=dtype).reshape(shape).copy()


def start_message(
    probe: np.ndarray | None = None,
    bad_pixels: np.ndarray | None = None,
    units: str | None = None,
    pixel_size_m: float | None = None,
) -> list[bytes]:
    """The parts of a start message (send with ``socket.send_multipart``)."""
    header: dict[str, Any] = {"msg": "start"}
    frames = []
    if units is not None:
        header["units"] = units
    if pixel_size_m is not None:
        header["pixel_size_m"] = pixel_size_m
    if probe is not None:
        array = np.ascontiguousarray(probe, dtype=np.complex64)
        header["probe"] = {"shape": list(array.shape)}
        frames.append(array.tobytes())
    if bad_pixels is not None:
        array = np.ascontiguousarray(bad_pixels, dtype=np.uint8)
        header["bad_pixels"] = {"shape": list(array.shape)}
        frames.append(array.tobytes())
    return [json.dumps(header).encode(), *frames]


def frames_message(
    patterns: np.ndarray, positions_px: np.ndarray, taken: float | None = None
) -> list[bytes]:
    """The parts of a frames message: patterns (B, N, N) at ``positions_px`` (B, 2) (y, x)."""
    array = np.ascontiguousarray(patterns)
    pos = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    header = {
        "msg": "frames",
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "x": pos[:, 1].tolist(),
        "y": pos[:, 0].tolist(),
        "time": time.time() if taken is None else taken,
    }
    return [json.dumps(header).encode(), array.tobytes()]


def end_message() -> list[bytes]:
    return [json.dumps({"msg": "end"}).encode()]
