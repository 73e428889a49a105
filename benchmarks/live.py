"""Throughput of ``ptychopinn live``: sustained patterns/s and write-to-image latency (JSON).

``live`` runs as a real process with its page up and no refinement between arrivals; a
writer feeds it a simulated scan in blocks of ``--block`` patterns through one of its sources
(``--source``): scan files renamed into the watched directory (written beforehand, so the
writer costs nothing while it runs), rows appended to a growing HDF5 file in SWMR mode, or
ZMQ messages. With ``--rate R`` a block is released every ``block / R`` seconds whatever
``live`` does (a detector does not wait): ``live`` sustains R when every block is on the page
about as soon as it is released (the latency stays flat and bounded). With ``--rate 0`` each
block is released once the one before is on the page (as fast as ``live`` keeps up). The
latencies are ``live``'s own (``/status.json``: from a block's writing to the page's images
that hold it), sampled at every redraw; ``live_peak_rss_mb`` is its peak memory before the
final reconstruction (the arrived patterns wait on disk, so it should not grow with the scan).

Usage::

    python benchmarks/live.py --model_path RUN --rate 1000 --out live.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptychopinn.data.simulate import simulate_scan
from ptychopinn.io.growing import growing_scan_writer
from ptychopinn.io.npz import write_scan_npz
from ptychopinn.streams import end_message, frames_message, start_message
from ptychopinn.workflows import load_bundle


def status(url: str) -> dict:
    with urllib.request.urlopen(url + "status.json", timeout=10) as response:
        return json.loads(response.read())


def peak_rss_mb(pid: int) -> float | None:
    """A process's peak resident memory so far (Linux; None elsewhere)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


@contextlib.contextmanager
def feeder(kind: str, tmp: Path, scan: Any, block: int) -> Iterator[tuple[list[str], Any]]:
    """(live's source arguments, release(k): put block k where live reads it, then end())."""
    blocks = [
        np.arange(s, min(s + block, scan.n_patterns)) for s in range(0, scan.n_patterns, block)
    ]
    counts = [np.asarray(scan.diffraction[i]).round().astype(np.uint32) for i in blocks]
    if kind == "files":
        watch, staging = tmp / "incoming", tmp / "staging"
        watch.mkdir()
        staging.mkdir()
        for k, index in enumerate(blocks):
            write_scan_npz(staging / f"f{k:05d}.npz", scan.subset(index))

        def release(k: int) -> None:
            os.utime(staging / f"f{k:05d}.npz")  # written now, as far as live can tell
            os.replace(staging / f"f{k:05d}.npz", watch / f"f{k:05d}.npz")

        yield ["--watch", str(watch)], (release, lambda: (watch / "END").write_text(""))
    elif kind == "swmr":
        path = tmp / "scan.h5"
        with growing_scan_writer(
            path, n=scan.N, dtype=np.uint32, units="counts", probe=scan.probe
        ) as writer:
            yield (
                ["--watch", str(path)],
                (
                    lambda k: writer.append(counts[k], scan.positions_px[blocks[k]]),
                    writer.finish,
                ),
            )
    else:
        import zmq

        socket = zmq.Context.instance().socket(zmq.PUSH)
        port = socket.bind_to_random_port("tcp://127.0.0.1")

        def send(k: int) -> None:  # a PUSH socket blocks until live has connected
            if k == 0:
                socket.send_multipart(start_message(probe=scan.probe, units="counts"))
            socket.send_multipart(frames_message(counts[k], scan.positions_px[blocks[k]]))

        try:
            yield (
                ["--zmq", f"tcp://127.0.0.1:{port}"],
                (
                    send,
                    lambda: socket.send_multipart(end_message()),
                ),
            )
        finally:
            socket.close(linger=1000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_path", required=True, help="a trained run (N of its patterns)")
    p.add_argument("--out", required=True)
    p.add_argument("--patterns", type=int, default=8192, help="patterns in all (8192)")
    p.add_argument("--block", type=int, default=512, help="patterns per file or message (512)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="patterns/s released (0: each block once the one before is shown)")  # fmt: skip
    p.add_argument("--source", choices=["files", "swmr", "zmq"], default="files")
    p.add_argument("--accelerator", default="cpu")
    args = p.parse_args(argv)
    n = load_bundle(args.model_path).config.model.N
    scan = simulate_scan(n=n, n_positions=args.patterns, object_kind="grf", seed=11)
    n_blocks = -(-args.patterns // args.block)
    with (
        tempfile.TemporaryDirectory() as tmp,
        feeder(args.source, Path(tmp), scan, args.block) as (source_args, (release, end)),
    ):
        proc = subprocess.Popen(
            [sys.executable, "-m", "ptychopinn.cli", "live", "--model_path", args.model_path,
             *source_args, "--output_dir", str(Path(tmp) / "OUT"), "--port", "0", "--refine",
             "0", "--no_live_refinement", "--linger_s", "1", "--poll_s", "0.02",
             "--accelerator", args.accelerator],
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stderr is not None
        url = None
        for line in proc.stderr:
            match = re.search(r"live view at (http://[\d.]+:\d+/)", line)
            if match:
                url = match.group(1)
                break
        assert url is not None, "live did not start"
        latencies: list[float] = []
        seen_version = 0

        def sample() -> dict:
            nonlocal seen_version
            now = status(url)
            if now["version"] > seen_version and now["latency_s"] is not None:
                seen_version = now["version"]
                latencies.append(now["latency_s"])
            return now

        started = time.time()
        for k in range(n_blocks):
            release(k)
            shown_at_least = min((k + 1) * args.block, args.patterns)
            due = started + (k + 1) * args.block / args.rate if args.rate > 0 else None
            while True:
                now = sample()
                if due is None and now["shown"] >= shown_at_least:
                    break
                if due is not None and time.time() >= due:
                    break
                time.sleep(0.01)
        released = time.time()
        while (now := sample())["shown"] < args.patterns:
            time.sleep(0.01)
        finished = time.time()
        peak_mb = peak_rss_mb(proc.pid)  # before the final reconstruction
        end()
        proc.wait(timeout=600)
    result = {
        "benchmark": "live",
        "settings": vars(args),
        "N": n,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "patterns_per_s_wall": args.patterns / (finished - started),
        "patterns_per_s_busy": now["patterns_per_s"],
        "last_shown_after_release_s": finished - released,
        "latency_s": {
            "median": statistics.median(latencies),
            "p90": float(np.percentile(latencies, 90)),
            "max": max(latencies),
            "redraws": len(latencies),
        },
        "arrivals": now["files"],
        "live_peak_rss_mb": peak_mb,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
