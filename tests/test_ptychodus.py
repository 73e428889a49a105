"""Ptychodus 1.7.0 (the real package) drives ptychopinn: files, conventions and batch mode.

Input files are written with Ptychodus's own writers (``ptychodus.api.io``), positions are
mapped with Ptychodus's own geometry, and ``ptychodus -b train|reconstruct`` runs as a
subprocess exactly as a beamline user runs it (default device ``cuda``, strategy
``ddp_spawn`` and 4 data-loader workers, on a machine without a GPU).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ptychodus")

from ptychodus.api.assemble import AssembledDiffractionData  # noqa: E402
from ptychodus.api.geometry import PixelGeometry  # noqa: E402
from ptychodus.api.io import (  # noqa: E402
    load_product,
    save_diffraction_data,
    save_product,
    save_ptychopinn_training_data,
)
from ptychodus.api.object import Object, ObjectCenter, ObjectPosition  # noqa: E402
from ptychodus.api.probe import ProbeSequence  # noqa: E402
from ptychodus.api.probe_positions import ProbePositionSequence  # noqa: E402
from ptychodus.api.product import Product, ProductMetadata  # noqa: E402
from ptychodus.api.reconstruct import prepare_reconstruct_input  # noqa: E402

from ptychopinn import __version__  # noqa: E402
from ptychopinn.data.simulate import simulate_scan  # noqa: E402
from ptychopinn.evaluation import evaluate, scanned_region  # noqa: E402
from ptychopinn.inference import Reconstruction  # noqa: E402
from ptychopinn.io import ptychodus_files  # noqa: E402
from ptychopinn.io.scan import ScanData  # noqa: E402

N = 32
PHOTON_ENERGY_EV = 10_000.0
DETECTOR_DISTANCE_M = 2.0
DETECTOR_PIXEL_M = 75e-6
#: Far-field object pixel size lambda z / (N p_detector), about 103 nm.
PIXEL_M = (
    4.135667696e-15 * 299792458.0 / PHOTON_ENERGY_EV * DETECTOR_DISTANCE_M / (N * DETECTOR_PIXEL_M)
)
#: Our patch centre minus Ptychodus's for even N (written out, not taken from the code).
HALF = 0.5

SETTINGS = """\
[Processing]
Algorithm = ptychopinn-torch_unsupervised

[PtychoPINNTorchData]
model_size = 32
num_channels = 1
grid_size_x = 1
grid_size_y = 1

[PtychoPINNTorchTraining]
epochs = {epochs}
"""


def ptychodus_product(scan: ScanData, order: np.ndarray | None = None, first_index: int = 0):
    """The scan as a Ptychodus Product: object centred at (0, 0) m, positions in metres.

    Positions go through Ptychodus's own ``map_coordinates_object_to_probe``, in the order
    ``order`` and with position indexes ``first_index + pattern number``.
    """
    assert scan.object is not None
    obj = Object(scan.object, PixelGeometry(PIXEL_M, PIXEL_M), ObjectCenter(0.0, 0.0))
    geometry = obj.get_geometry()
    order = np.arange(scan.n_patterns) if order is None else order
    points = [
        geometry.map_coordinates_object_to_probe(
            ObjectPosition(
                first_index + int(i),
                scan.positions_px[i, 1] - HALF,
                scan.positions_px[i, 0] - HALF,
            )
        )
        for i in order
    ]
    metadata = ProductMetadata(
        name="simulated",
        comments="made by test_ptychodus",
        detector_distance_m=DETECTOR_DISTANCE_M,
        photon_energy_eV=PHOTON_ENERGY_EV,
        probe_photon_count=0.0,
        exposure_time_s=0.1,
        mass_attenuation_m2_per_kg=0.0,
        tomography_angle_deg=0.0,
    )
    probes = ProbeSequence(scan.probe, None, PixelGeometry(PIXEL_M, PIXEL_M))
    return Product(metadata, ProbePositionSequence(points), probes, obj, [])


def write_pair(directory: Path, scan: ScanData, order=None, first_index: int = 0) -> Product:
    """product.h5 + diffraction.h5 written by Ptychodus's ``save_product``/``save_diffraction_data``."""
    directory.mkdir(parents=True, exist_ok=True)
    product = ptychodus_product(scan, order, first_index)
    save_product(directory / "product.h5", product)
    diffraction = AssembledDiffractionData(
        indexes=first_index + np.arange(scan.n_patterns),
        patterns=np.asarray(scan.diffraction),
        pixel_geometry=PixelGeometry(DETECTOR_PIXEL_M, DETECTOR_PIXEL_M),
        bad_pixels=np.zeros((scan.N, scan.N), dtype=bool),
    )
    save_diffraction_data(directory / "diffraction.h5", diffraction)
    return product


def scan_centred(scan: ScanData) -> ScanData:
    """Crop the object so the scan's bounding box is centred on it, as Ptychodus sizes objects.

    Needs a jitter-free symmetric raster (its centre is then an integer pixel).
    """
    assert scan.object is not None
    lo, hi = scan.positions_px.min(axis=0), scan.positions_px.max(axis=0)
    centre = (lo + hi) / 2
    assert np.allclose(centre, np.round(centre))
    half = np.ceil((hi - lo) / 2).astype(int) + N // 2 + 2
    start = np.round(centre).astype(int) - half
    obj = scan.object[start[0] : start[0] + 2 * half[0], start[1] : start[1] + 2 * half[1]]
    return ScanData(
        diffraction=scan.diffraction,
        units=scan.units,
        positions_px=scan.positions_px - start,
        probe=scan.probe,
        object=obj,
        source="scan-centred",
    )


def run_ptychodus(*args: str, home: Path, timeout: float = 500) -> tuple[int, str]:
    """(exit status, output) of ``python -m ptychodus ARGS`` with HOME = ``home``.

    Runs in its own session so that a timeout also ends the processes Ptychodus spawned.
    """
    env = {**os.environ, "HOME": str(home), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ptychodus", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=home,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"ptychodus {' '.join(args)} ran over {timeout} s:\n{out[-4000:]}")
    return proc.returncode, out


def test_our_centre_convention_reproduces_ptychodus_forward_model():
    """Ptychodus's own simulator agrees with ours only with p = x_px + 1/2 (even N)."""
    from ptychodus.api.simulate.diffraction import generate_diffraction_data

    scan = simulate_scan(
        n=N, n_positions=9, object_kind="image", photons_per_pattern=None, step_px=4.0, jitter_px=0
    )
    ours = np.asarray(scan.diffraction, dtype=np.float64) ** 2
    errors = {}
    for offset in (0.0, HALF, 1.0):
        shifted = ScanData(
            diffraction=scan.diffraction,
            positions_px=scan.positions_px + HALF - offset,
            probe=scan.probe,
            object=scan.object,
        )
        theirs = generate_diffraction_data(ptychodus_product(shifted)).get_patterns()
        theirs = theirs * (ours.sum() / theirs.sum())
        errors[offset] = float(np.abs(theirs - ours).sum() / ours.sum())
    assert errors[HALF] < 0.01, errors
    assert errors[0.0] > 10 * errors[HALF] and errors[1.0] > 10 * errors[HALF], errors


def test_product_round_trip_ptychodus_ptychopinn_ptychodus(tmp_path):
    """Positions survive Ptychodus -> read_scan -> write_product -> Ptychodus to 1e-6 px."""
    scan = simulate_scan(n=N, n_positions=30, object_kind="grf", photons_per_pattern=1e5, seed=3)
    order = np.random.default_rng(0).permutation(scan.n_patterns)  # pairing is by index
    original = write_pair(tmp_path, scan, order=order, first_index=100)

    read = ptychodus_files.read_scan(tmp_path)
    assert read.units == "counts" and read.n_patterns == scan.n_patterns
    np.testing.assert_array_equal(np.asarray(read.diffraction), np.asarray(scan.diffraction))
    np.testing.assert_allclose(read.positions_px, scan.positions_px, atol=1e-6)
    np.testing.assert_array_equal(read.object, scan.object)
    np.testing.assert_allclose(read.probe, scan.probe)
    assert read.pixel_size_m == pytest.approx(PIXEL_M)
    # the diffraction file alone finds its product
    same = ptychodus_files.read_scan(tmp_path / "diffraction.h5")
    np.testing.assert_array_equal(same.positions_px, read.positions_px)

    rec = Reconstruction(
        object=scan.object[5:-5, 4:-4] * np.complex64(1j),
        origin_px=(5, 4),
        coverage=np.ones((1, 1), np.float32),
        positions_px=read.positions_px,
        N=N,
    )
    out = ptychodus_files.write_product(
        tmp_path / "out" / "product.h5", rec, tmp_path / "product.h5", scan=read
    )
    back = load_product(out)
    geometry = back.object_.get_geometry()
    assert geometry == original.object_.get_geometry()
    x_px = geometry.map_probe_positions_to_object_x_px(back.probe_positions)
    y_px = geometry.map_probe_positions_to_object_y_px(back.probe_positions)
    idx = back.probe_positions.get_indexes() - 100
    np.testing.assert_allclose(x_px, scan.positions_px[idx, 1] - HALF, atol=1e-6)
    np.testing.assert_allclose(y_px, scan.positions_px[idx, 0] - HALF, atol=1e-6)
    expected = np.zeros_like(scan.object)
    expected[5:-5, 4:-4] = scan.object[5:-5, 4:-4] * 1j
    np.testing.assert_allclose(back.object_.get_layer(0), expected)
    assert back.metadata.photon_energy_eV == PHOTON_ENERGY_EV
    assert back.metadata.detector_distance_m == DETECTOR_DISTANCE_M
    assert "ptychopinn" in back.metadata.comments
    np.testing.assert_allclose(back.probes.get_probe_no_opr().get_array(), scan.probe)


def test_facade_from_np_returns_object_on_input_grid():
    """from_np takes Ptychodus's (y, x) pixel positions; a known object shape is honoured."""
    from ptycho_torch.api.base_api import (
        ConfigManager,
        InferenceEngine,
        PtychoDataLoader,
        PtychoModel,
    )
    from ptycho_torch.config_params import DataConfig, ModelConfig, TrainingConfig
    from ptycho_torch.model import PtychoPINN_Lightning

    scan = simulate_scan(n=N, n_positions=20, object_kind="grf", photons_per_pattern=1e5)
    cm = ConfigManager(
        data_config=DataConfig(N=N, C=1, grid_size=(1, 1)),
        model_config=ModelConfig(n_filters_scale=1, probe_big=False),
        training_config=TrainingConfig(device="cuda", n_devices=1),
    )
    config = cm.to_config(n=N)
    assert config.training.accelerator in ("cpu", "gpu") and config.training.strategy == "auto"
    from ptychopinn.data.dataset import Normalization

    module = PtychoPINN_Lightning(
        config.to_dict(), Normalization.from_scan(scan).to_dict(), 1, probe=None
    )
    model = PtychoModel(cm.model_config, cm.data_config, cm.training_config, model=module)
    modes = np.concatenate([scan.probe, 0.3 * scan.probe[:, ::-1]])  # (2, N, N) mode stack
    loader = PtychoDataLoader.from_np(
        diff_patterns=np.asarray(scan.diffraction).astype(np.uint16),
        probe=modes,
        positions=scan.positions_px - HALF,
        config_manager=cm,
        object_shape=scan.object.shape,
    )
    np.testing.assert_allclose(loader.scan.positions_px, scan.positions_px)
    assert loader.scan.units == "counts" and loader.scan.n_probe_modes == 2
    obj = InferenceEngine(config_manager=cm, ptycho_model=model).predict_and_stitch(loader)
    assert obj.shape == scan.object.shape and np.iscomplexobj(obj)
    assert np.all(np.isfinite(obj))
    assert np.abs(obj).max() > 0  # a module built without a probe still stitches its patches


#: Epochs of the batch test: Ptychodus's other training settings stay at its defaults (the
#: default recipe); one pattern per network input, as on the command line.
EPOCHS = 8


@pytest.fixture(scope="module")
def batch_data(tmp_path_factory):
    """IN/{diffraction.h5, product.h5, settings.ini, training.npz} from a scan-centred object."""
    root = tmp_path_factory.mktemp("ptychodus")
    scan = scan_centred(
        simulate_scan(
            n=N, n_positions=256, object_kind="image", photons_per_pattern=1e6, jitter_px=0
        )
    )
    product = write_pair(root / "IN", scan)
    (root / "IN" / "settings.ini").write_text(SETTINGS.format(epochs=EPOCHS))
    # Ptychodus's "Export Training Data" for this backend
    reconstruct_input = prepare_reconstruct_input(
        AssembledDiffractionData(
            np.arange(scan.n_patterns),
            np.asarray(scan.diffraction),
            PixelGeometry(DETECTOR_PIXEL_M, DETECTOR_PIXEL_M),
            np.zeros((N, N), dtype=bool),
        ),
        product,
    )
    save_ptychopinn_training_data(root / "IN" / "training.npz", reconstruct_input)
    (root / "home").mkdir()
    return root, scan


@pytest.mark.slow
def test_ptychodus_batch_train_then_reconstruct(batch_data):
    root, scan = batch_data
    home = root / "home"
    status, log = run_ptychodus(
        "-b", "train", "-i", str(root / "IN"), "-o", str(root / "TRAIN_OUT"), home=home
    )
    assert status == 0, log[-4000:]
    assert "Training failed" not in log, log[-4000:]
    # ModelCore discovered the backend, with our version
    assert f"PtychoPINN-Torch {__version__}" in log
    assert "no CUDA GPU is available: using the CPU" in log  # device='cuda' fell back
    checkpoints = sorted((root / "TRAIN_OUT").glob("run_*/checkpoints/best-*.ckpt"))
    assert len(checkpoints) == 1, list((root / "TRAIN_OUT").rglob("*"))

    shutil.copy(checkpoints[0], root / "IN" / "model.ckpt")
    status, log = run_ptychodus(
        "-b", "reconstruct", "-i", str(root / "IN"), "-o", str(root / "REC_OUT"), home=home
    )
    assert status == 0, log[-4000:]
    assert "Reconstruction failed" not in log, log[-4000:]
    result = load_product(root / "REC_OUT" / "product.000001.h5")
    obj = result.object_.get_layer(0)
    assert np.iscomplexobj(obj) and np.all(np.isfinite(obj))
    assert obj.shape == scan.object.shape  # the input object's grid
    assert (
        result.object_.get_geometry()
        == load_product(root / "IN" / "product.h5").object_.get_geometry()
    )

    box = scanned_region(scan.positions_px, N, scan.object.shape)
    trained_m = evaluate(obj, scan.object, crop_box=box)
    untrained_m = evaluate(untrained_reconstruction(scan), scan.object, crop_box=box)
    # Ptychodus's reconstruction is the default inference (the network, then refine auto):
    # measured phase / amplitude SSIM 0.997 / 0.988 (2-core EPYC, float32); the untrained
    # network alone 0.118 / 0.090
    assert trained_m.phase_ssim >= 0.9, trained_m
    assert trained_m.amplitude_ssim >= 0.8, trained_m
    assert trained_m.phase_ssim > untrained_m.phase_ssim + 0.3, (trained_m, untrained_m)
    assert "refine auto" in log  # the default inference ran


def untrained_reconstruction(scan: ScanData) -> np.ndarray:
    """The same network, untrained, through the same facade path (the baseline to beat)."""
    import torch

    from ptycho_torch.api.base_api import (
        ConfigManager,
        InferenceEngine,
        PtychoDataLoader,
        PtychoModel,
    )
    from ptycho_torch.config_params import DataConfig
    from ptycho_torch.model import PtychoPINN_Lightning
    from ptychopinn.data.dataset import Normalization

    torch.manual_seed(0)
    cm = ConfigManager(data_config=DataConfig(N=N, C=1, grid_size=(1, 1)))
    config = cm.to_config(n=N)
    module = PtychoPINN_Lightning(
        config.to_dict(),
        Normalization.from_scan(scan).to_dict(),
        1,
        probe=torch.from_numpy(scan.probe),
    )
    loader = PtychoDataLoader.from_np(
        diff_patterns=np.asarray(scan.diffraction),
        probe=scan.probe,
        positions=scan.positions_px - HALF,
        config_manager=cm,
    )
    model = PtychoModel(cm.model_config, cm.data_config, model=module)
    rec = InferenceEngine(config_manager=cm, ptycho_model=model).reconstruct(loader, refine=0)
    return rec.on_object_grid(scan.object.shape)


def test_every_keyword_ptychodus_builds_is_accepted_and_mapped(caplog):
    """Ptychodus's own settings -> config objects (its ``_build_configs``) -> ptychopinn Config."""
    from ptychodus.api.settings import SettingsRegistry
    from ptychodus.model.ptychopinn_torch.reconstructor import _build_configs
    from ptychodus.model.ptychopinn_torch.settings import (
        PtychoPINNTorchDataSettings,
        PtychoPINNTorchInferenceSettings,
        PtychoPINNTorchModelSettings,
        PtychoPINNTorchTrainingSettings,
    )

    from ptycho_torch.api.base_api import ConfigManager

    registry = SettingsRegistry()
    settings = [
        PtychoPINNTorchDataSettings(registry),
        PtychoPINNTorchModelSettings(registry),
        PtychoPINNTorchTrainingSettings(registry),
        PtychoPINNTorchInferenceSettings(registry),
    ]
    settings[1].cbam_encoder.set_value(False)  # a setting ptychopinn has no use for
    with caplog.at_level("WARNING"):
        data, model, training, inference, datagen = _build_configs("Unsupervised", *settings)
        config = ConfigManager(data, model, training, inference, datagen).to_config(n=64)
    n_keywords = sum(
        len(vars(c)) for c in (data, model, training, inference)
    )  # every keyword lands in a field
    assert n_keywords >= 90
    assert "cbam_encoder=False" in caplog.text
    assert "DataConfig.N = 128" in caplog.text  # the data decide N
    m, t = config.model, config.training
    # gridsize keeps its upstream meaning (channels); Ptychodus's filter scale 2 is upstream's
    # standard network, which is ptychopinn's standard 1; the rest is the default recipe
    assert (m.N, m.gridsize, m.mode, m.amp_activation) == (64, 2, "unsupervised", "softplus")
    assert (m.n_filters_scale, m.overlap_grid, m.architecture) == (1.0, 3, "backprop_unet")
    assert (t.max_epochs, t.batch_size, t.learning_rate, t.num_workers) == (50, 16, 1e-3, 4)
    assert (t.loss, t.scheduler, t.warmup_fraction) == ("poisson", "cosine", 0.06)
    assert t.strategy == "auto" and t.devices == 1  # ddp_spawn on one device runs in-process


def test_warmup_epochs_become_the_warmup_fraction_and_back():
    """Ptychodus's ``warmup_epochs`` takes effect: the same share of the run warms up."""
    from ptycho_torch.api.base_api import ConfigManager
    from ptycho_torch.api.configs import facade_configs
    from ptycho_torch.config_params import TrainingConfig
    from ptychopinn.errors import ConfigError

    training = TrainingConfig(epochs=20, warmup_epochs=2, scheduler="Cosine", device="cpu")
    config = ConfigManager(training_config=training).to_config(n=64)
    assert (config.training.warmup_fraction, config.training.scheduler) == (0.1, "cosine")
    assert facade_configs(config)[2].warmup_epochs == 2
    with pytest.raises(ConfigError, match="warmup_epochs"):
        ConfigManager(training_config=TrainingConfig(epochs=5, warmup_epochs=5)).to_config(n=64)


def test_checkpoint_and_bundle_both_load_as_model_ckpt(tmp_path):
    """model.ckpt may be our Lightning checkpoint or a bundle; both load without pickle."""
    import torch

    from ptycho_torch.api.base_api import PtychoModel
    from ptycho_torch.lightning_utils import find_best_checkpoint
    from ptycho_torch.model import PtychoPINN_Lightning
    from ptychopinn.bundle import save_bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.data.dataset import Normalization

    config = Config(model=ModelConfig(N=N, n_filters_scale=0.5))
    norm = Normalization(N=N, amplitude_factor=0.1, nphotons=1e5, probe_power=10.0)
    probe = torch.polar(torch.ones(1, N, N), torch.zeros(1, N, N))
    module = PtychoPINN_Lightning(config.to_dict(), norm.to_dict(), 1, probe=probe)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt = tmp_path / "run" / "checkpoints" / "best-epoch=003.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    torch.save({}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert find_best_checkpoint(tmp_path / "run") == ckpt
    bundle_path = save_bundle(
        tmp_path / "model.ckpt", config, norm, module.net, module.physics.probe
    )

    x = torch.rand(2, 1, N, N)
    expected = module.eval()(x)
    for path in (ckpt, bundle_path):
        data, model_cfg, training, inference = PtychoModel._extract_configs_from_checkpoint(path)
        assert (data.N, data.C, model_cfg.mode) == (N, 1, "Unsupervised")
        loaded = PtychoPINN_Lightning.load_from_checkpoint(
            path,
            model_config=model_cfg,
            data_config=data,
            training_config=training,
            inference_config=inference,
        )
        torch.testing.assert_close(loaded(x), expected)
        torch.testing.assert_close(loaded.physics.probe, module.physics.probe)
