"""Faults injected on purpose: nothing lost, nothing half-written, one line, bounded memory.

Each class of failure an adversarial user (or a full disk, or a signal) causes is tried here:
output paths and output sets, signals at chosen points, a full or read-only disk (injected:
the tests run as root, for whom permissions do not hold), inputs that ask for unbounded
memory (run under a resource limit), absurd bundle values, and inputs that used to be read
quietly wrong. Each asserts the exit status, one stderr line, no partial output and the
earlier data intact.
"""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ptychopinn.cli import main
from ptychopinn.errors import OutputError, OutputExistsError
from ptychopinn.io.outputs import output_set


def one_line(capsys: pytest.CaptureFixture[str], status: int, *fragments: str) -> str:
    """The error of an in-process ``main`` call: one ``error:`` line on stderr holding the
    fragments (log lines of the work done before may precede it), no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def no_leftovers(directory: Path) -> None:
    """No temporary files or directories of an output set or an atomic write remain."""
    leftovers = [p.name for p in directory.iterdir() if ".partial" in p.name or ".part" in p.name]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory: pytest.TempPathFactory, tiny_scan: Any) -> Path:
    from ptychopinn.io.npz import write_scan_npz

    path = tmp_path_factory.mktemp("faults") / "scan.npz"
    write_scan_npz(path, tiny_scan)
    return path


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Any) -> Path:
    from ptychopinn.bundle import save_bundle

    path = tmp_path_factory.mktemp("bundle") / "wts.h5.zip"
    b = tiny_bundle
    return save_bundle(path, b.config, b.normalization, b.net, b.probe)


# -- output paths and output sets ------------------------------------------------------------
@pytest.mark.parametrize("name", ["scan", "scan.NPZ", "scan.H5", "scan.txt"])
def test_simulate_output_suffix_decides_the_format(tmp_path, capsys, name):
    existing = tmp_path / name
    existing.write_bytes(b"earlier data")
    for extra in ([], ["--overwrite"]):
        status = main(
            ["simulate", "--output", str(existing), "--N", "32", "--n_positions", "9", *extra]
        )
        assert status == 2
        one_line(capsys, 2, "suffix decides the format")
    assert existing.read_bytes() == b"earlier data"  # untouched, even with --overwrite
    no_leftovers(tmp_path)


def test_an_output_set_is_committed_whole_or_not_at_all(tmp_path):
    out = tmp_path / "OUT"
    with output_set(out, ["a", "b"], overwrite=False) as work:
        (work / "a").write_text("first")
        (work / "b").write_text("first")
        assert not out.exists()  # nothing visible before the commit
    assert (out / "a").read_text() == "first"
    with pytest.raises(RuntimeError), output_set(out, ["a", "b"], overwrite=True) as work:
        (work / "a").write_text("second")
        raise RuntimeError("failed half way")
    assert (out / "a").read_text() == "first" and (out / "b").read_text() == "first"
    with output_set(out, ["a", "b"], overwrite=True) as work:
        (work / "a").write_text("third")
    assert sorted(p.name for p in out.iterdir()) == ["a"]  # the whole set replaced
    no_leftovers(tmp_path)


def test_two_runs_into_one_directory_the_later_is_refused_at_its_commit(tmp_path):
    """Both start while the directory is empty; the first to finish commits, the second's
    outputs are dropped with an error instead of silently replacing the first's."""
    out = tmp_path / "OUT"
    with pytest.raises(OutputExistsError), output_set(out, ["a"], overwrite=False) as second:
        with output_set(out, ["a"], overwrite=False) as first:
            (first / "a").write_text("first")
        (second / "a").write_text("second")
    assert (out / "a").read_text() == "first"
    no_leftovers(tmp_path)


def test_overwrite_never_deletes_files_that_are_not_outputs(
    tmp_path, scan_file, bundle_file, capsys
):
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["infer", "--model_path", str(bundle_file), "--data", str(scan_file),
            "--output_dir", str(out), "--refine", "0", "--overwrite"]  # fmt: skip
    assert main(args) == 2
    one_line(capsys, 2, "notes.txt", "not this command's outputs")
    assert (out / "notes.txt").read_text() == "mine"
    file_out = tmp_path / "a_file"
    file_out.write_text("x")
    assert main([*args[:-3], "--output_dir", str(file_out)]) == 2
    one_line(capsys, 2, "not a directory")


def test_infer_replaces_its_whole_earlier_output_set_only_with_overwrite(
    tmp_path, scan_file, bundle_file, capsys
):
    out = tmp_path / "OUT"
    base = ["infer", "--model_path", str(bundle_file), "--data", str(scan_file),
            "--output_dir", str(out)]  # fmt: skip
    assert main([*base, "--refine", "1"]) == 0
    assert (out / "network" / "reconstruction.npz").exists()
    capsys.readouterr()
    before = (out / "reconstruction.npz").read_bytes()
    assert main([*base, "--refine", "0"]) == 2  # refused before any work
    one_line(capsys, 2, "--overwrite")
    assert (out / "reconstruction.npz").read_bytes() == before
    assert main([*base, "--refine", "0", "--overwrite"]) == 0
    assert not (out / "network").exists()  # the earlier set went whole, not file by file
    assert oct((out / "reconstruction.npz").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    no_leftovers(tmp_path)


def _umask() -> int:
    from ptychopinn.io.atomic import umask

    return umask()


def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(
    tmp_path, scan_file, bundle_file, capsys, monkeypatch
):
    import tempfile

    from ptychopinn import reconstruction

    out = tmp_path / "OUT"
    args = ["infer", "--model_path", str(bundle_file), "--data", str(scan_file),
            "--output_dir", str(out), "--refine", "0", "--quiet"]  # fmt: skip

    def full(*a: Any, **k: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "reconstruction.npz"))

    monkeypatch.setattr(reconstruction, "write_npz", full)
    assert main(args) == 2
    one_line(capsys, 2, "no space left on the device")
    assert not out.exists()
    no_leftovers(tmp_path)
    monkeypatch.undo()

    def read_only(*a: Any, **k: Any) -> str:
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(args) == 2
    one_line(capsys, 2, "read-only file system")
    assert not out.exists()


SIGNAL_DURING_SAVE = """
import os, signal, sys
from ptychopinn import reconstruction
from ptychopinn.cli import main
save = reconstruction.Reconstruction.save
def save_then_signal(self, out):
    paths = save(self, out)
    os.kill(os.getpid(), signal.SIGTERM)  # after the first files of the set are written
    return paths
reconstruction.Reconstruction.save = save_then_signal
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_the_writes_leaves_no_partial_output(tmp_path, scan_file, bundle_file):
    out = tmp_path / "OUT"
    result = subprocess.run(
        [sys.executable, "-c", SIGNAL_DURING_SAVE, "infer", "--model_path", str(bundle_file),
         "--data", str(scan_file), "--output_dir", str(out), "--refine", "0"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 143, result.stderr
    assert "terminated" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()
    no_leftovers(tmp_path)


# -- training runs -----------------------------------------------------------------------------
CHEAP = ["--preset", "fast", "--groups_per_epoch", "16", "--n_filters_scale", "0.25",
         "--logger", "none"]  # fmt: skip


def test_train_refuses_an_interrupted_run_and_overwrite_replaces_the_whole_run(
    tmp_path, scan_file, capsys
):
    run_dir = tmp_path / "RUN"
    train = ["train", "--train_data", str(scan_file), "--output_dir", str(run_dir), *CHEAP,
             "--quiet"]  # fmt: skip
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an interrupted run's state")
    (run_dir / "notes.txt").write_text("mine")
    assert main([*train, "--max_epochs", "1"]) == 2
    one_line(capsys, 2, "holds an earlier run", "--resume", "--overwrite")
    assert main([*train, "--max_epochs", "1", "--overwrite"]) == 0
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == sorted(["last.ckpt", *[n for n in names if n.startswith("best-")]])
    assert (run_dir / "notes.txt").read_text() == "mine"  # not an output: kept
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0  # the new run's, not the interrupted one's bytes


def test_resume_from_a_truncated_or_foreign_checkpoint_is_one_line(tmp_path, scan_file, capsys):
    run_dir = tmp_path / "RUN"
    train = ["train", "--train_data", str(scan_file), "--output_dir", str(run_dir), *CHEAP,
             "--quiet", "--max_epochs", "1"]  # fmt: skip
    assert main(train) == 0
    last = run_dir / "checkpoints" / "last.ckpt"
    whole = last.read_bytes()
    assert main([*train, "--resume", "--architecture", "ptychopinn"]) == 2
    one_line(capsys, 2, "--resume continues the same model", "architecture")
    last.write_bytes(whole[: len(whole) // 2])
    assert main([*train, "--resume"]) == 2
    one_line(capsys, 2, "last.ckpt", "not a readable checkpoint")


def test_a_full_disk_while_checkpointing_keeps_the_last_whole_checkpoint(
    tmp_path, tiny_scan, monkeypatch
):
    """The second epoch's checkpoint cannot be written: training stops with one clear error,
    and last.ckpt is still the first epoch's, whole and resumable."""
    import lightning as L

    from ptychopinn import workflows as pp
    from ptychopinn.config import Config, ModelConfig, TrainingConfig

    config = Config(
        model=ModelConfig(N=32, n_filters_scale=0.25, overlap_grid=1),
        training=TrainingConfig(max_epochs=2, groups_per_epoch=16, logger="none"),
    )
    save = L.Trainer.save_checkpoint

    def save_or_fail(self: L.Trainer, path: Any, *args: Any, **kwargs: Any) -> None:
        if self.current_epoch >= 1:
            Path(path).write_bytes(b"half a checkpoint")  # what a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save(self, path, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "save_checkpoint", save_or_fail)
    with pytest.raises(OutputError, match="no space left on the device"):
        pp.train(config, tiny_scan, tmp_path / "RUN", progress=False)
    monkeypatch.undo()
    last = tmp_path / "RUN" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0
    assert not list(last.parent.glob("*.partial"))
    resumed = pp.train(config, tiny_scan, tmp_path / "RUN", resume=True, progress=False)
    assert resumed.bundle_path.exists()


def test_a_stale_lock_of_a_killed_run_is_broken_and_a_live_one_is_respected(
    tmp_path, scan_file, capsys
):
    import socket

    run_dir = tmp_path / "RUN"
    run_dir.mkdir()
    lock = run_dir / ".ptychopinn.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{socket.gethostname()} {sleeper.pid}")
        train = ["train", "--train_data", str(scan_file), "--output_dir", str(run_dir), *CHEAP,
                 "--quiet", "--max_epochs", "1"]  # fmt: skip
        assert main(train) == 2
        one_line(capsys, 2, "another run is using this directory", str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(train) == 0  # its process is gone: the lock is stale and broken
    assert not lock.exists()


def test_several_nodes_without_a_launcher_are_refused_instead_of_hanging(
    tmp_path, scan_file, capsys, monkeypatch
):
    for name in ("SLURM_NTASKS", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    status = main(["train", "--train_data", str(scan_file), "--output_dir", str(tmp_path / "R"),
                   "--num_nodes", "2", *CHEAP])  # fmt: skip
    assert status == 2
    one_line(capsys, 2, "num_nodes 2", "launcher")


# -- memory ----------------------------------------------------------------------------------
def _limited(args: list[str], cwd: Path, gib: float = 4.0) -> subprocess.CompletedProcess[str]:
    """A CLI run whose address space is limited: an unbounded allocation would fail, not
    swap the machine."""

    def limit() -> None:
        size = int(gib * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return subprocess.run(
        [sys.executable, "-m", "ptychopinn.cli", *args], cwd=cwd, capture_output=True,
        text=True, timeout=300, preexec_fn=limit,
    )  # fmt: skip


def _one_line_status_2(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    lines = [line for line in result.stderr.strip().splitlines() if ": error: " in line]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_glitched_position_is_refused_before_its_canvas_is_allocated(
    tmp_path, scan_file, bundle_file
):
    with np.load(scan_file) as npz:
        arrays = dict(npz)
    for key in ("xcoords", "ycoords"):
        arrays[key] = arrays[key].copy()
        arrays[key][3] = 5e4  # one glitched encoder reading
    arrays.pop("objectGuess")
    np.savez(tmp_path / "glitch.npz", **arrays)
    result = _limited(
        ["infer", "--model_path", str(bundle_file), "--data", "glitch.npz", "--output_dir", "O"],
        tmp_path,
    )
    _one_line_status_2(result, "object canvas", "GiB", "--max_memory_gb")
    assert not (tmp_path / "O").exists()


@pytest.mark.parametrize("flag", [["--step_px", "1e4"], ["--jitter_px", "1e5"]])
def test_simulate_refuses_an_object_it_could_not_hold(tmp_path, flag):
    result = _limited(
        ["simulate", "--output", "s.npz", "--N", "32", "--n_positions", "64", *flag], tmp_path
    )
    _one_line_status_2(result, "simulate", "object", "--max_memory_gb")
    assert not (tmp_path / "s.npz").exists()


def test_a_decompression_bomb_and_an_npz_holding_a_member_twice_are_refused(tmp_path, capsys):
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("diffraction.npy", "w", force_zip64=True) as member:
            zeros = bytes(1 << 24)
            for _ in range(6):  # 96 MiB of zeros, about 100 kB compressed
                member.write(zeros)
    assert main(["check", str(bomb)]) == 2
    one_line(capsys, 2, "bomb.npz", "zip bomb")
    twice = tmp_path / "twice.npz"
    arrays = {"xcoords": np.zeros(2), "ycoords": np.zeros(2)}
    with zipfile.ZipFile(twice, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for name in ("diffraction", "diffraction"):
            buf = io.BytesIO()
            np.save(buf, np.ones((2, 8, 8)))
            zf.writestr(f"{name}.npy", buf.getvalue())
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, value)
            zf.writestr(f"{key}.npy", buf.getvalue())
    assert main(["check", str(twice)]) == 2
    one_line(capsys, 2, "diffraction.npy more than once")


# -- bundles whose values parse but are wrong -------------------------------------------------
def _edit_bundle(src: Path, dst: Path, member: str, edit: Any) -> Path:
    from safetensors.torch import load, save

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == member:
                if member.endswith(".json"):
                    data = json.dumps(edit(json.loads(data))).encode()
                else:
                    data = save(edit(load(data)))
            zout.writestr(info.filename, data)
    return dst


def _probe(edit: Any) -> Any:
    return ("probe.safetensors", lambda d: {"probe": edit(d["probe"])})


def _norm(key: str, value: Any) -> Any:
    return ("normalization.json", lambda d: {**d, key: value})


BAD_BUNDLES = {
    "probe NaN": (
        *_probe(lambda p: p.index_fill(1, torch.tensor([3]), float("nan"))),
        "NaN or Inf",
    ),
    "probe all zero": (*_probe(torch.zeros_like), "all zero"),
    "probe wrong last axis": (*_probe(lambda p: p[..., :1].contiguous()), "probe: expected shape"),
    "probe no modes": (*_probe(lambda p: p[:0].contiguous()), "at least one mode"),
    "amplitude_factor NaN": (*_norm("amplitude_factor", float("nan")), "amplitude_factor"),
    "amplitude_factor text": (*_norm("amplitude_factor", "1.0"), "amplitude_factor"),
    "probe_power zero": (*_norm("probe_power", 0.0), "probe_power"),
    "probe_power negative": (*_norm("probe_power", -1.0), "probe_power"),
    "normalization N": (*_norm("N", 64), "N = 64"),
    "weights NaN": (
        "weights.safetensors",
        lambda d: {
            k: (torch.full_like(v, float("nan")) if i == 0 else v)
            for i, (k, v) in enumerate(d.items())
        },
        "NaN or Inf",
    ),
    "huge network": (
        "config.json",
        lambda d: {**d, "model": {**d["model"], "n_filters_scale": 150}},
        "n_filters_scale",
    ),
    "format_version negative": (
        "manifest.json",
        lambda d: {**d, "format_version": -7},
        "format_version",
    ),
    "format_version true": (
        "manifest.json",
        lambda d: {**d, "format_version": True},
        "format_version",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_bundle_values_that_parse_but_are_wrong_are_one_line(
    case, tmp_path, scan_file, bundle_file, capsys
):
    member, edit, fragment = BAD_BUNDLES[case]
    bad = _edit_bundle(bundle_file, tmp_path / "bad.zip", member, edit)
    status = main(["infer", "--model_path", str(bad), "--data", str(scan_file),
                   "--output_dir", str(tmp_path / "O"), "--refine", "0", "--quiet"])  # fmt: skip
    assert status == 2
    one_line(capsys, 2, "bad.zip", fragment)
    assert not (tmp_path / "O").exists()


# -- read quietly wrong, before -----------------------------------------------------------------
def test_inputs_that_were_read_quietly_wrong_are_refused(tmp_path, scan_file, bundle_file, capsys):
    import h5py

    with np.load(scan_file) as npz:
        arrays = dict(npz)
    zero_ref = dict(arrays, objectGuess=np.zeros_like(arrays["objectGuess"]))
    np.savez(tmp_path / "zero_ref.npz", **zero_ref)
    assert main(["evaluate", "--reconstruction", str(scan_file), "--reference",
                 str(tmp_path / "zero_ref.npz"), "--output_dir", str(tmp_path / "E")]) == 2  # fmt: skip
    one_line(capsys, 2, "all zero")
    np.savez(
        tmp_path / "dark.npz", **dict(arrays, diffraction=np.zeros_like(arrays["diffraction"]))
    )
    assert main(["infer", "--model_path", str(bundle_file), "--data", str(tmp_path / "dark.npz"),
                 "--output_dir", str(tmp_path / "D"), "--refine", "0", "--quiet"]) == 2  # fmt: skip
    one_line(capsys, 2, "all patterns are zero")
    # an HDF5 scan whose patterns live in another file (a virtual dataset)
    from ptychopinn.io.hdf5 import write_scan_h5
    from ptychopinn.io.npz import read_npz

    write_scan_h5(tmp_path / "real.h5", read_npz(scan_file))
    with h5py.File(tmp_path / "real.h5") as src:
        shape, dtype = src["diffraction"].shape, src["diffraction"].dtype
    write_scan_h5(tmp_path / "virtual.h5", read_npz(scan_file))
    with h5py.File(tmp_path / "virtual.h5", "a") as f:
        del f["diffraction"]
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        layout[:] = h5py.VirtualSource(str(tmp_path / "real.h5"), "diffraction", shape=shape)
        f.create_virtual_dataset("diffraction", layout)
    assert main(["check", str(tmp_path / "virtual.h5")]) == 2
    one_line(capsys, 2, "virtual dataset")


def test_a_closed_pipe_is_one_line(tmp_path, scan_file):
    result = subprocess.run(
        f"{sys.executable} -m ptychopinn.cli check {scan_file} | head -c 1",
        shell=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert len(result.stdout) == 1


def test_interrupt_and_terminate_have_their_exit_statuses(tmp_path, scan_file):
    """SIGINT 130, SIGTERM 143, from a command that is waiting (no work half done)."""
    code = (
        "import os, signal, sys, time\n"
        "from ptychopinn import commands\n"
        "from ptychopinn.cli import main\n"
        # as from a terminal (a shell's background job starts with SIGINT ignored)
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "commands.run_check = lambda args: (os.kill(os.getpid(), int(sys.argv[1])), time.sleep(5))\n"
        "sys.exit(main(['check', sys.argv[2]]))\n"
    )
    for signum, status in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        result = subprocess.run(
            [sys.executable, "-c", code, str(int(signum)), str(scan_file)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == status, result.stderr
        assert "Traceback" not in result.stderr
    assert os.path.exists(scan_file)


def test_malformed_files_of_other_kinds_are_one_line(tmp_path, scan_file, capsys):
    """Attributes and keys of the wrong type: a chunked HDF5 scan, a Ptychodus product, a
    reconstruction.npz (each used to end in a traceback)."""
    import h5py

    from ptychopinn.io.hdf5 import write_scan_h5
    from ptychopinn.io.npz import read_npz

    write_scan_h5(tmp_path / "scan.h5", read_npz(scan_file))
    with h5py.File(tmp_path / "scan.h5", "a") as f:
        f.attrs["format_version"] = "abc"
    assert main(["check", str(tmp_path / "scan.h5")]) == 2
    one_line(capsys, 2, "format_version")
    np.savez(tmp_path / "rec.npz", object=np.ones((4, 4), np.complex64), origin_px=[0, 0],
             coverage=np.ones((4, 4)), positions_px=np.zeros((1, 2)), N=np.array("x"))  # fmt: skip
    assert main(["evaluate", "--reconstruction", str(tmp_path / "rec.npz"), "--reference",
                 str(scan_file), "--output_dir", str(tmp_path / "E")]) == 2  # fmt: skip
    one_line(capsys, 2, "rec.npz")
    assert not (tmp_path / "E").exists()


def test_pipes_and_devices_as_inputs_are_one_line_and_never_opened(tmp_path, scan_file):
    """A FIFO would block the reader until a writer came, /dev/zero would read forever: every
    input path (scan, HDF5 scan, bundle, reconstruction) is refused by its kind first."""
    for name in ("pipe.npz", "pipe.h5", "wts.h5.zip"):
        os.mkfifo(tmp_path / name)
    cases = [
        (["check", "pipe.npz"], "named pipe"),
        (["check", "pipe.h5"], "named pipe"),
        (["check", "/dev/zero"], "character device"),
        (["infer", "--model_path", "wts.h5.zip", "--data", str(scan_file), "--output_dir", "O"],
         "named pipe"),
        (["evaluate", "--reconstruction", "/dev/zero", "--reference", str(scan_file),
          "--output_dir", "E"], "character device"),
    ]  # fmt: skip
    for args, kind in cases:
        result = subprocess.run(
            [sys.executable, "-m", "ptychopinn.cli", *args],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert kind in lines[0], lines[0]
    assert not (tmp_path / "O").exists() and not (tmp_path / "E").exists()


@pytest.mark.parametrize(
    "flags",
    [
        ["--N", "100000"],
        ["--N", "48"],
        ["--seed", "-1"],
        ["--jitter_px", "inf"],
        ["--photons", "nan"],
    ],
)
def test_simulate_values_are_refused_at_parse_time(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as info:
        main(["simulate", "--output", str(tmp_path / "s.npz"), *flags])
    assert info.value.code == 2
    assert not (tmp_path / "s.npz").exists()
