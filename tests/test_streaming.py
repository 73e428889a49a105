"""Scans larger than memory: chunked HDF5, memory-mapped NPZ, streamed training and inference.

One small simulated scan (N = 32) is stored three ways - a compressed NPZ (loaded into
memory), an uncompressed NPZ (memory-mapped) and a chunked HDF5 file (streamed) - and every
way must give the same patterns, the same trained weights and the same reconstruction.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ptychopinn import workflows
from ptychopinn.bundle import Bundle, load_bundle
from ptychopinn.config import Config, ModelConfig, TrainingConfig
from ptychopinn.data import dataset as dataset_module
from ptychopinn.data.dataset import GroupDataset, Normalization
from ptychopinn.data.grouping import group_positions
from ptychopinn.data.simulate import simulate_scan, write_simulated_scan_h5
from ptychopinn.inference import reconstruct
from ptychopinn.io.hdf5 import H5Array, read_scan_h5, write_scan_h5
from ptychopinn.io.npz import read_npz, scan_to_arrays, write_scan_npz
from ptychopinn.io.scan import ScanData
from ptychopinn.models.cnn import PtychoPINNNet
from ptychopinn.physics.functional import extract_patches, square_support
from ptychopinn.stitching import CanvasGeometry, Stitcher, hilbert_order

SIM: dict[str, Any] = {
    "n": 32,
    "n_positions": 256,
    "object_kind": "image",
    "photons_per_pattern": 1e6,
    "seed": 0,
}
CONFIG = Config(
    model=ModelConfig(
        N=32, stem_stride=2, n_filters_scale=0.25, architecture="ptychopinn", norm_layer="batch"
    ),
    training=TrainingConfig(
        max_epochs=1, batch_size=16, logger="none", deterministic=True, learning_rate=0.002
    ),
)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same scan as a compressed NPZ, an uncompressed NPZ and a chunked HDF5 file."""
    d = tmp_path_factory.mktemp("streaming")
    scan = simulate_scan(**SIM)
    np.savez_compressed(d / "compressed.npz", **scan_to_arrays(scan))  # type: ignore[arg-type]
    write_scan_npz(d / "plain.npz", scan)
    write_simulated_scan_h5(d / "scan.h5", **SIM)
    return {"compressed": d / "compressed.npz", "plain": d / "plain.npz", "h5": d / "scan.h5"}


def _bundle(seed: int = 0) -> Bundle:
    """An untrained (seeded) bundle for N = 32."""
    torch.manual_seed(seed)
    net = PtychoPINNNet(CONFIG.model).eval()
    norm = Normalization(N=32, amplitude_factor=0.02, nphotons=1e6, probe_power=256.0)
    probe = torch.ones(1, 32, 32, dtype=torch.complex64)
    return Bundle(CONFIG, norm, net, probe, manifest={})


# -- readers ---------------------------------------------------------------------------------
def test_all_three_files_hold_the_same_scan(files: dict[str, Path]) -> None:
    ref = read_npz(files["compressed"])
    plain = read_npz(files["plain"])
    h5 = workflows.read_scan(files["h5"])
    assert type(ref.diffraction) is np.ndarray and not isinstance(ref.diffraction, np.memmap)
    assert isinstance(plain.diffraction, np.memmap)
    assert isinstance(h5.diffraction, H5Array)
    for scan in (plain, h5):
        assert scan.units == ref.units == "counts"
        np.testing.assert_array_equal(np.asarray(scan.diffraction[:]), ref.diffraction)
        np.testing.assert_array_equal(scan.positions_px, ref.positions_px)
        np.testing.assert_array_equal(scan.nominal_positions_px, ref.nominal_positions_px)
        np.testing.assert_array_equal(scan.probe, ref.probe)
        np.testing.assert_array_equal(scan.object, ref.object)


def test_write_scan_h5_round_trips_a_scan(tmp_path: Path) -> None:
    scan = simulate_scan(n=32, n_positions=20, photons_per_pattern=None, seed=4)
    write_scan_h5(tmp_path / "a.h5", scan)
    back = read_scan_h5(tmp_path / "a.h5")
    assert back.units == "amplitude" and back.diffraction.dtype == np.float32
    np.testing.assert_array_equal(back.diffraction[:], scan.diffraction)
    np.testing.assert_array_equal(back.positions_px, scan.positions_px)
    np.testing.assert_array_equal(back.probe, scan.probe)
    # a streamed scan converts again without loading the whole stack
    write_scan_h5(tmp_path / "b.h5", back)
    np.testing.assert_array_equal(read_scan_h5(tmp_path / "b.h5").diffraction[:], scan.diffraction)


def test_h5array_indexes_like_numpy(files: dict[str, Path]) -> None:
    ref = read_npz(files["compressed"]).diffraction
    arr = H5Array(files["h5"], "diffraction")
    assert arr.shape == ref.shape and arr.dtype == ref.dtype and len(arr) == len(ref)
    rng = np.random.default_rng(0)
    picks = [
        np.array([5, 3, 3, 40, 41, 42, 255, 0, -1]),
        np.sort(rng.choice(256, 60, replace=False)),
        np.arange(10, 30),
        np.array([], dtype=np.int64),
    ]
    for idx in picks:
        np.testing.assert_array_equal(arr[idx], ref[idx])
    mask = np.zeros(256, bool)
    mask[::7] = True
    np.testing.assert_array_equal(arr[mask], ref[mask])
    np.testing.assert_array_equal(arr[7], ref[7])
    np.testing.assert_array_equal(arr[-3:], ref[-3:])
    np.testing.assert_array_equal(arr[[1, 4], 2:5], ref[[1, 4], 2:5])
    np.testing.assert_array_equal(np.asarray(arr), ref)
    again = pickle.loads(pickle.dumps(arr))  # no open handle travels
    np.testing.assert_array_equal(again[[9, 2]], ref[[9, 2]])
    with pytest.raises(IndexError):
        arr[np.array([256])]


def _items(loader: DataLoader) -> torch.Tensor:
    return torch.cat([batch["amplitude"] for batch in loader])


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_h5_scan_streams_through_dataloader_workers(files: dict[str, Path], context: str) -> None:
    """Workers reopen the file in their own process (fork) or after unpickling (spawn)."""
    scan = workflows.read_scan(files["h5"])
    groups = group_positions(scan.positions_px, 1)
    norm = Normalization.from_scan(scan)
    reference = GroupDataset(read_npz(files["compressed"]), groups, norm)
    streamed = GroupDataset(scan, groups, norm, cache=False)
    assert streamed._amplitude is None
    scan.diffraction[0]  # a handle open in the parent must not leak into the workers
    workers = 2 if context == "fork" else 1
    loader = DataLoader(
        streamed, batch_size=32, num_workers=workers, multiprocessing_context=context
    )
    torch.testing.assert_close(_items(loader), _items(DataLoader(reference, batch_size=32)))


# -- training and inference give the same results whatever the storage -------------------------
def test_training_and_inference_match_across_storage(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One epoch from the in-memory NPZ and from the HDF5 file streamed per item: the same
    weights; the bundle reconstructs the same object from all three files."""
    ref = load_bundle(
        workflows.train(
            CONFIG, read_npz(files["compressed"]), tmp_path / "ref", progress=False
        ).bundle_path
    )
    monkeypatch.setattr(dataset_module, "IN_MEMORY_LIMIT_BYTES", 0)  # no in-memory cache
    h5_scan = workflows.read_scan(files["h5"])
    streamed = load_bundle(
        workflows.train(CONFIG, h5_scan, tmp_path / "h5", progress=False).bundle_path
    )
    ref_state = ref.net.state_dict()
    for key, value in streamed.net.state_dict().items():
        torch.testing.assert_close(value, ref_state[key], rtol=1e-5, atol=1e-6)
    rec_ref = reconstruct(ref, read_npz(files["compressed"]))
    for name in ("plain", "h5"):
        rec = reconstruct(ref, workflows.read_scan(files[name]))
        assert rec.origin_px == rec_ref.origin_px
        np.testing.assert_array_equal(rec.object, rec_ref.object)
        np.testing.assert_array_equal(rec.coverage, rec_ref.coverage)


# -- streamed inference --------------------------------------------------------------------------
class CountingArray:
    """An array-like that records how many patterns each read asks for."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: Any) -> np.ndarray:
        rows = self.array[key]
        self.reads.append(1 if rows.ndim == 2 else len(rows))
        return rows


def test_reconstruct_reads_at_most_one_chunk_at_a_time(files: dict[str, Path]) -> None:
    plain = read_npz(files["compressed"])
    counting = CountingArray(plain.diffraction)
    scan = ScanData(
        diffraction=counting,
        units=plain.units,
        positions_px=plain.positions_px,
        probe=plain.probe,
        object=plain.object,
    )
    counting.reads.clear()  # validation reads the stack in its own chunks
    bundle = _bundle()
    rec = reconstruct(bundle, scan, chunk_patterns=64, batch_size=16)
    assert max(counting.reads) <= 64
    # every pattern read once, plus the sample of at most 256 that measures the dose
    assert sum(counting.reads) == scan.n_patterns + min(scan.n_patterns, 256)
    assert rec.metadata["n_chunks"] == 4
    assert np.all(np.isfinite(rec.object))


def test_one_chunk_reproduces_the_all_at_once_reconstruction(files: dict[str, Path]) -> None:
    """A chunk as large as the scan: predict everything, synchronise, stitch (the old way)."""
    from ptychopinn.inference import predict_patches, stitch_weights, support_window
    from ptychopinn.stitching import stitch, synchronize_phases

    scan = read_npz(files["compressed"])
    bundle = _bundle()
    rec = reconstruct(bundle, scan, chunk_patterns=scan.n_patterns)
    norm = bundle.normalization.for_scan(scan)
    amplitude = torch.from_numpy(scan.amplitudes() * np.float32(norm.amplitude_factor))[:, None]
    window = support_window(bundle)
    weight = stitch_weights(bundle, "probe")[window, window]
    with torch.inference_mode():
        patches = torch.cat(
            [
                predict_patches(bundle, amplitude[s : s + 32])[:, 0, window, window]
                for s in range(0, scan.n_patterns, 32)
            ]
        )
        synced = synchronize_phases(patches, scan.positions_px, weight)
        geometry = CanvasGeometry.covering(scan.positions_px, scan.N)
        obj, coverage, _ = stitch(synced, torch.from_numpy(scan.positions_px), weight, geometry)
    np.testing.assert_allclose(rec.object, obj.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rec.coverage, coverage.numpy(), rtol=1e-6)


def _phase_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Phase of a - phase of b on ``mask``, their global phase difference removed."""
    ratio = a[mask] * np.conj(b[mask])
    return np.angle(ratio * np.exp(-1j * np.angle(ratio.sum())))


def test_chunked_stitching_matches_all_at_once_on_exact_patches() -> None:
    """Exact patches with random phases: stitched 64 at a time in Hilbert order, the canvas
    agrees with stitching them all at once (and both with the object)."""
    rng = np.random.default_rng(0)
    from ptychopinn.data.samples import make_object, make_scan_positions

    obj = make_object("grf", (140, 140), rng, max_phase_rad=2.0, feature_px=4.0)
    pos = make_scan_positions("raster", 900, 3.2, rng, jitter_px=0.5) + 70
    truth = extract_patches(torch.from_numpy(obj)[None], torch.from_numpy(pos)[None], 16)[0]
    offsets = torch.from_numpy(rng.uniform(-np.pi, np.pi, len(pos)).astype(np.float32))
    patches = truth * torch.polar(torch.ones_like(offsets), offsets)[:, None, None]
    weights = square_support(16, 8)
    geometry = CanvasGeometry.covering(pos, 16)

    def stitched(chunk: int) -> tuple[np.ndarray, np.ndarray]:
        stitcher = Stitcher(geometry, weights)
        order = hilbert_order(pos) if chunk < len(pos) else np.arange(len(pos))
        for start in range(0, len(pos), chunk):
            rows = order[start : start + chunk]
            stitcher.add_synchronized(patches[rows], pos[rows], hold_unanchored=chunk < len(pos))
        obj_t, weight = stitcher.result()
        return obj_t.numpy(), weight.numpy()

    whole, weight = stitched(len(pos))
    chunked, chunked_weight = stitched(64)
    np.testing.assert_allclose(chunked_weight, weight, rtol=1e-5, atol=1e-5)
    covered = weight > 0.01 * weight.max()
    difference = np.abs(_phase_difference(chunked, whole, covered))
    assert difference.max() < 0.06  # measured 0.040 rad
    r0, c0 = geometry.origin_px
    ref = obj[r0 : r0 + weight.shape[0], c0 : c0 + weight.shape[1]]
    inner = weight > 0.5 * weight.max()
    err_whole = np.abs(_phase_difference(whole, ref, inner)).mean()
    err_chunked = np.abs(_phase_difference(chunked, ref, inner)).mean()
    assert err_chunked < 0.03 and err_whole < 0.03  # measured 0.0135 and 0.0142 rad


def test_chunked_reconstruct_matches_all_at_once(files: dict[str, Path]) -> None:
    """The network's patches, 64 patterns per chunk against one chunk."""
    scan = read_npz(files["compressed"])
    bundle = _bundle()
    whole = reconstruct(bundle, scan)
    chunked = reconstruct(bundle, scan, chunk_patterns=64)
    assert chunked.metadata["n_chunks"] == 4 and whole.metadata["n_chunks"] == 1
    np.testing.assert_allclose(chunked.coverage, whole.coverage, rtol=1e-5, atol=1e-5)
    covered = whole.coverage > 0.01 * whole.coverage.max()
    difference = np.abs(_phase_difference(chunked.object, whole.object, covered))
    assert difference.max() < 0.01  # measured 0.002 rad


def test_large_ptychodus_scan_streams_through_a_picklable_array(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the in-memory limit a Ptychodus diffraction.h5 stays on disk, safe for workers."""
    import h5py

    from ptychopinn.io import ptychodus_files

    n, m, pixel_m = 32, 16, 1e-7
    patterns = np.random.default_rng(0).poisson(5.0, (m, n, n)).astype(np.uint32)
    with h5py.File(tmp_path / "diffraction.h5", "w") as f:
        f["patterns"], f["indexes"] = patterns, np.arange(m)
    with h5py.File(tmp_path / "product.h5", "w") as f:
        f["probe_position_indexes"] = np.arange(m)
        f["probe_position_x_m"] = (np.arange(m) % 4 - 1.5) * 3 * pixel_m
        f["probe_position_y_m"] = (np.arange(m) // 4 - 1.5) * 3 * pixel_m
        f["probe"] = np.ones((1, 1, n, n), np.complex64)
        f["object"] = np.ones((1, 96, 96), np.complex64)
        for key in ("probe", "object"):
            f[key].attrs["pixel_width_m"] = f[key].attrs["pixel_height_m"] = pixel_m
        f["object"].attrs["center_x_m"] = f["object"].attrs["center_y_m"] = 0.0
    monkeypatch.setattr(ptychodus_files, "IN_MEMORY_LIMIT_BYTES", 0)
    scan = workflows.read_scan(tmp_path)
    assert isinstance(scan.diffraction, H5Array)
    again = pickle.loads(pickle.dumps(scan))
    np.testing.assert_array_equal(again.diffraction[[3, 1]], patterns[[3, 1]])
    np.testing.assert_array_equal(scan.amplitudes(), np.sqrt(patterns.astype(np.float32)))
