"""Network shapes derived from one config, and the supervised mode."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ptychopinn.config import Config, ModelConfig, TrainingConfig
from ptychopinn.errors import ConfigError
from ptychopinn.models import build_network
from ptychopinn.models.cnn import ChannelLayerNorm, PtychoPINNNet, count_parameters
from ptychopinn.models.unet import backpropagate
from ptychopinn.physics.functional import far_field_amplitude, normalize_probe, square_support


@pytest.mark.parametrize("architecture", ["ptychopinn", "backprop_unet"])
@pytest.mark.parametrize("n", [64, 128, 256])
def test_shapes_follow_n(n, architecture):
    """Every N from the config works (N = 32 and the other options: tests/test_networks.py)."""
    config = ModelConfig(N=n, n_filters_scale=0.125, architecture=architecture)
    net = build_network(config).eval()
    net.set_probe(normalize_probe(torch.randn(1, n, n, dtype=torch.complex64)))
    with torch.no_grad():
        amp, _ = net(torch.rand(2, 1, n, n))
    assert amp.shape == (2, 1, n, n)


@pytest.mark.parametrize("architecture", ["ptychopinn", "backprop_unet"])
def test_overlap_group_inputs_are_predicted_each_on_their_own(architecture):
    """At gridsize 1 each pattern of an overlap group is its own network input: its patch
    depends on that pattern only, not on the rest of its group (the group meets in the loss)."""
    from ptychopinn.training.module import PtychoPINNModule

    config = Config(
        model=ModelConfig(
            N=32, n_filters_scale=0.125, architecture=architecture, norm_layer="group"
        )
    )
    assert (config.model.C, config.model.K) == (1, 9)
    torch.manual_seed(0)
    norm = {"N": 32, "amplitude_factor": 1.0, "nphotons": 1e6, "probe_power": 1.0}
    probe = torch.randn(1, 32, 32, dtype=torch.complex64)
    module = PtychoPINNModule(config.to_dict(), norm, probe=probe).eval()
    x = torch.rand(2, 9, 32, 32)
    other = x.clone()
    other[:, 1:] = torch.rand(2, 8, 32, 32)  # same first pattern, other group members
    with torch.no_grad():
        patches, patches_other = module(x), module(other)
        amp, phase = module.net(x[:, :1], module.physics.probe)
    torch.testing.assert_close(patches[:, :1], patches_other[:, :1])
    torch.testing.assert_close(patches[:, :1], torch.polar(amp, phase))
    assert not torch.allclose(patches[:, 1:], patches_other[:, 1:])


def test_a_channel_model_in_overlap_groups_sees_each_input_with_its_channels():
    """At gridsize 2 the K inputs of a group have C = 4 channels each: (B, K * C) patterns."""
    from ptychopinn.training.module import PtychoPINNModule

    config = Config(model=ModelConfig(N=32, gridsize=2, n_filters_scale=0.125))
    assert (config.model.C, config.model.K) == (4, 9)
    norm = {"N": 32, "amplitude_factor": 1.0, "nphotons": 1e6, "probe_power": 1.0}
    module = PtychoPINNModule(config.to_dict(), norm, probe=torch.ones(1, 32, 32)).eval()
    x = torch.rand(2, 36, 32, 32)
    with torch.no_grad():
        patches = module(x)
        first = module.net(x[:, :4], module.physics.probe)
    assert patches.shape == (2, 36, 32, 32)
    torch.testing.assert_close(patches[:, :4], torch.polar(*first))


def test_channel_layer_norm_normalises_each_pixel_of_each_sample_on_its_own():
    """``norm_layer="layer"``: every pixel's channels have mean 0 and variance 1 (at the initial
    scale and shift), in training as in evaluation, channels-last or not, and a sample's
    output does not depend on the rest of its batch (BatchNorm's does, in training)."""
    norm = ChannelLayerNorm(8)
    x = torch.randn(3, 8, 5, 6) * 4 + 2
    y = norm(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(3, 5, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(3, 5, 6), atol=1e-3, rtol=0)
    torch.testing.assert_close(norm(x.contiguous(memory_format=torch.channels_last)), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 statistics, the input's dtype out
        low = norm(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), y, atol=0.05, rtol=0.02)
    torch.testing.assert_close(
        norm.to(torch.bfloat16)(x.bfloat16()).float(), y, atol=0.05, rtol=0.02
    )
    config = ModelConfig(N=32, n_filters_scale=0.25, stem_stride=2, architecture="backprop_unet")
    torch.manual_seed(0)
    net = build_network(dataclasses.replace(config, norm_layer="layer")).train()
    net.set_probe(normalize_probe(torch.randn(1, 32, 32, dtype=torch.complex64)))
    batch = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        alone = net(batch[:1])[1]
        together = net(batch)[1][:1]
        evaluated = net.eval()(batch[:1])[1]
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(evaluated, alone)
    assert any(isinstance(m, ChannelLayerNorm) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def test_default_network_size():
    """The default N = 64 network is the upstream size (about 2.3 M parameters)."""
    assert (
        2.0e6
        < count_parameters(
            PtychoPINNNet(ModelConfig(architecture="ptychopinn", n_filters_scale=2, stem_stride=1))
        )
        < 2.6e6
    )


def test_backpropagation_inverts_the_physics_where_the_phase_is_the_probes():
    """A flat object's exit wave has the probe's far-field phase: one step recovers it exactly."""
    n = 32
    yy, xx = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    r2 = (yy**2 + xx**2).float()
    probe = normalize_probe(torch.polar((r2 < 64).float(), 0.05 * r2)[None])
    obj = torch.full((1, 1, n, n), 0.8 + 0j, dtype=torch.complex64)
    estimate = backpropagate(far_field_amplitude(probe, obj), probe)
    bright = probe[0].abs() > 0.5 * probe[0].abs().max()
    # the probe division is regularised: |P|^2 / (|P|^2 + eps) of the true value
    power = probe[0].abs().square()
    expected = 0.8 * power / (power + 0.05 * power.max())
    torch.testing.assert_close(estimate[0, 0][bright], expected[bright].to(torch.complex64))


def test_backprop_unet_uses_the_probe_it_is_given():
    config = ModelConfig(N=32, n_filters_scale=0.25, architecture="backprop_unet")
    torch.manual_seed(0)
    net = build_network(config).eval()
    x = torch.rand(2, 1, 32, 32)
    p1 = normalize_probe(torch.randn(1, 32, 32, dtype=torch.complex64))
    p2 = normalize_probe(torch.randn(1, 32, 32, dtype=torch.complex64))
    net.set_probe(p1)
    with torch.no_grad():
        a1, _ = net(x)
        a1_explicit, _ = net(x, p1)
        a2, _ = net(x, p2)
    torch.testing.assert_close(a1, a1_explicit)
    assert not torch.allclose(a1, a2)
    support = square_support(32, config.support_px) > 0
    assert torch.all(a1[..., ~support] == 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"N": 48},
        {"N": 512},
        {"gridsize": 0},
        {"overlap_stride": 0},
        {"overlap_stride": 1.5},
        {"overlap_grid": 5},
        {"stem_stride": 3},
        {"mode": "x"},
        {"architecture": "x"},
        {"norm_layer": "instance"},
        {"merge_weights": "intensity"},
    ],
)
def test_bad_model_config(bad):
    with pytest.raises(ConfigError):
        ModelConfig(**bad)


@pytest.mark.parametrize(
    "bad",
    [
        {"warmup_fraction": -0.1},
        {"warmup_fraction": 1.0},
        {"max_time": 0.0},
        {"devices": 0},
        {"seed": -1},
        {"adam_beta2": 1.0},
        {"adam_beta2": 0.0},
    ],
)
def test_bad_training_config(bad):
    with pytest.raises(ConfigError):
        TrainingConfig(**bad)


def test_config_round_trip_rejects_unknown_keys():
    config = Config(
        model=ModelConfig(
            N=32, gridsize=2, overlap_stride=3, norm_layer="batch", merge_weights="support"
        ),
        training=TrainingConfig(max_epochs=3, warmup_fraction=0.1, adam_beta2=0.99),
    )
    assert Config.from_dict(config.to_dict()) == config
    data = config.to_dict()
    data["model"]["channels"] = 4
    with pytest.raises(ConfigError, match="unknown keys"):
        Config.from_dict(data)


@pytest.mark.slow
def test_supervised_training_learns_the_labels(tmp_path, tiny_scan):
    from ptychopinn import workflows as pp

    scan = tiny_scan
    config = Config(
        model=ModelConfig(N=32, stem_stride=2, n_filters_scale=0.5, mode="supervised"),
        training=TrainingConfig(
            max_epochs=8, learning_rate=2e-3, groups_per_epoch=64, logger="none"
        ),
    )
    run = pp.train(config, scan, tmp_path / "sup", progress=False)
    losses = run.metrics
    assert np.isfinite(losses["train_loss"])
    bundle = pp.load_bundle(run.bundle_path)
    assert bundle.config.model.mode == "supervised"
    rec = pp.reconstruct(bundle, scan)
    assert np.all(np.isfinite(rec.object))


def test_training_reports_a_collapse_only_after_the_first_steps(tmp_path, caplog, tiny_scan):
    """A network stuck at one patch is reported, but not before it has had a chance to learn."""
    import lightning as L

    from ptychopinn import workflows as pp
    from ptychopinn.models.diagnostics import COLLAPSE_MIN_STEPS

    class ConstantHead(L.Callback):
        """Zero output head: the same patch for every pattern (kept by a learning rate ~0)."""

        def on_train_start(self, trainer, pl_module):
            torch.nn.init.zeros_(pl_module.net.head.weight)
            torch.nn.init.zeros_(pl_module.net.head.bias)

    scan = tiny_scan
    model = ModelConfig(N=32, n_filters_scale=0.125, overlap_grid=1)
    steps_per_epoch = 4  # 64 groups per epoch, 16 per step
    for epochs, expected in ((2, False), (COLLAPSE_MIN_STEPS // steps_per_epoch + 2, True)):
        config = Config(
            model=model,
            training=TrainingConfig(
                max_epochs=epochs, learning_rate=1e-12, groups_per_epoch=64, logger="none"
            ),
        )
        caplog.clear()
        with caplog.at_level("WARNING"):
            pp.train(
                config, scan, tmp_path / f"run{epochs}", progress=False, callbacks=[ConstantHead()]
            )
        assert ("training has collapsed" in caplog.text) is expected, caplog.text


@pytest.mark.parametrize("scheduler", ["cosine", "constant"])
def test_learning_rate_warms_up_per_step_then_follows_the_schedule(tmp_path, scheduler):
    """The rate a real run steps with: a linear rise over the warmup fraction of its steps,
    then constant or half a cosine down to zero at the last step; Adam's beta2 as configured."""
    import lightning as L

    from ptychopinn import workflows as pp
    from ptychopinn.data.simulate import simulate_scan

    class Rates(L.Callback):
        def __init__(self) -> None:
            self.rates: list[float] = []
            self.betas: tuple[float, float] | None = None

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            group = optimizer.param_groups[0]
            self.rates.append(group["lr"])
            self.betas = group["betas"]

    scan = simulate_scan(n=32, n_positions=32, object_kind="image", photons_per_pattern=1e6, seed=0)
    config = Config(
        model=ModelConfig(N=32, n_filters_scale=0.125, overlap_grid=1),
        training=TrainingConfig(
            max_epochs=10,
            batch_size=8,
            groups_per_epoch=32,
            learning_rate=1e-3,
            scheduler=scheduler,
            warmup_fraction=0.2,
            adam_beta2=0.99,
            val_fraction=0.0,
            logger="none",
        ),
    )
    rates = Rates()
    pp.train(config, scan, tmp_path / "run", progress=False, callbacks=[rates])
    r = np.array(rates.rates) / 1e-3
    assert len(r) == 40 and rates.betas == (0.9, 0.99)  # 32 groups / 8 per step x 10 epochs
    np.testing.assert_allclose(r[:8], np.arange(1, 9) / 8, rtol=1e-6)  # warmup: 8 of 40 steps
    after = r[8:]
    if scheduler == "constant":
        np.testing.assert_allclose(after, 1.0, rtol=1e-6)
    else:
        np.testing.assert_allclose(after, 0.5 * (1 + np.cos(np.pi * np.arange(32) / 32)), rtol=1e-6)


def test_overlap_trained_bundle_predicts_each_pattern_once(tmp_path):
    """A gridsize-1 network trained in overlap groups predicts every pattern once (groups are
    a training matter) and reconstructs as the same network saved without them."""
    from ptychopinn import workflows as pp
    from ptychopinn.bundle import save_bundle
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.data.simulate import simulate_scan

    scan = simulate_scan(n=32, n_positions=36, object_kind="image", seed=0)
    norm = Normalization.from_scan(scan)
    grouped = ModelConfig(N=32, n_filters_scale=0.25)
    single = dataclasses.replace(grouped, overlap_grid=1)
    torch.manual_seed(0)
    net = build_network(grouped)
    probe = torch.from_numpy(scan.probe)
    recs = []
    for name, model in (("g3.zip", grouped), ("g1.zip", single)):
        path = save_bundle(tmp_path / name, Config(model=model), norm, net, probe)
        recs.append(pp.reconstruct(pp.load_bundle(path), scan, refine=0))
    assert recs[0].metadata["n_patches"] == recs[1].metadata["n_patches"] == 36
    np.testing.assert_allclose(recs[0].object, recs[1].object, atol=1e-5)


def test_per_pattern_bundles_of_earlier_versions_load(tmp_path):
    """A bundle saved with ``per_pattern`` (its weights under ``single.``) loads as the
    gridsize-1 network of an overlap group and predicts as that network does."""
    import json
    import zipfile

    from ptychopinn import workflows as pp
    from ptychopinn.bundle import save_bundle
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.data.simulate import simulate_scan

    scan = simulate_scan(n=32, n_positions=36, object_kind="image", seed=0)
    model = ModelConfig(N=32, n_filters_scale=0.25, unet_input="frame")
    torch.manual_seed(0)
    net = build_network(model)
    new = save_bundle(
        tmp_path / "new.zip",
        Config(model=model),
        Normalization.from_scan(scan),
        net,
        torch.from_numpy(scan.probe),
    )
    old = tmp_path / "old.zip"
    with zipfile.ZipFile(new) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                for key in ("overlap_grid", "overlap_stride", "unet_input"):
                    del config["model"][key]
                config["model"].update(gridsize=3, per_pattern=True, group_stride=2)
                data = json.dumps(config).encode()
            if item.filename == "weights.safetensors":
                from safetensors.torch import load, save

                data = save({f"single.{k}": v for k, v in load(data).items()})
            dst.writestr(item.filename, data)
    loaded = pp.load_bundle(old)
    assert (loaded.config.model.gridsize, loaded.config.model.overlap_grid) == (1, 3)
    a = pp.reconstruct(loaded, scan, refine=0)
    b = pp.reconstruct(pp.load_bundle(new), scan, refine=0)
    np.testing.assert_allclose(a.object, b.object, atol=1e-6)
