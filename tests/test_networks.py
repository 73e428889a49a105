"""Invariants of every network, stated once and run over the registry of configurations."""

from __future__ import annotations

import itertools

import pytest
import torch

from ptychopinn.bundle import Bundle, load_bundle, save_bundle
from ptychopinn.config import Config, ModelConfig
from ptychopinn.data.dataset import Normalization
from ptychopinn.inference import stitch_weights
from ptychopinn.models import build_network, prediction_support
from ptychopinn.physics.functional import normalize_probe

#: architecture x norm layer x whole frame x channels: every combination a user can ask for.
REGISTRY = [
    ModelConfig(
        N=32, architecture=arch, norm_layer=norm, probe_big=big, gridsize=g, n_filters_scale=0.25
    )
    for arch, norm, big, g in itertools.product(
        ("backprop_unet", "ptychopinn"), ("layer", "batch", "group", "none"), (False, True), (1, 2)
    )
]
IDS = [
    f"{c.architecture}-{c.norm_layer}-{'big' if c.probe_big else 'support'}-g{c.gridsize}"
    for c in REGISTRY
]


def _net(config: ModelConfig):
    torch.manual_seed(0)
    net = build_network(config).eval()
    net.set_probe(normalize_probe(torch.polar(torch.rand(1, 32, 32) + 0.1, torch.rand(1, 32, 32))))
    return net


@pytest.mark.parametrize("config", REGISTRY, ids=IDS)
def test_outputs_have_the_config_shapes_and_vanish_outside_the_prediction(config):
    net = _net(config)
    x = torch.rand(3, config.C, 32, 32)
    with torch.no_grad():
        amp, phase = net(x)
        amp_other, _ = net(torch.rand(3, config.C, 32, 32))
    assert amp.shape == phase.shape == (3, config.C, 32, 32)
    assert torch.all(amp >= 0) and torch.all(phase.abs() <= torch.pi)
    support = prediction_support(config) > 0
    assert bool(torch.all(amp[..., ~support] == 0)) and bool(torch.all(phase[..., ~support] == 0))
    # inside, the prediction depends on the input everywhere (the border too with probe_big)
    changed = (amp - amp_other).abs().amax(dim=(0, 1)) > 0
    assert bool(torch.all(changed[support]))


@pytest.mark.parametrize("config", REGISTRY, ids=IDS)
def test_stitching_weighs_exactly_what_the_network_predicts(config):
    """Stitching weights are zero where the network outputs zero and positive where it
    predicts (with probe_big the U-Net once got full weight on a border it set to zero)."""
    probe = normalize_probe(torch.polar(torch.rand(1, 32, 32) + 0.1, torch.rand(1, 32, 32)))
    norm = Normalization(N=32, amplitude_factor=1.0, nphotons=1e6, probe_power=1.0)
    bundle = Bundle(Config(model=config), norm, _net(config), probe, manifest={})
    with torch.no_grad():
        amp, _ = bundle.net(torch.rand(2, config.C, 32, 32))
    predicted = (amp > 0).any(dim=(0, 1))
    for kind in ("support", "probe", "intensity"):
        weights = stitch_weights(bundle, kind)
        assert torch.equal(weights > 0, predicted), kind


@pytest.mark.parametrize("config", REGISTRY[::3], ids=IDS[::3])
def test_bundle_save_load_is_the_identity(config, tmp_path):
    net = _net(config)
    probe = normalize_probe(torch.polar(torch.rand(2, 32, 32) + 0.1, torch.rand(2, 32, 32)))
    norm = Normalization(N=32, amplitude_factor=0.5, nphotons=1e5, probe_power=2.0)
    path = save_bundle(tmp_path / "b.zip", Config(model=config), norm, net, probe)
    loaded = load_bundle(path)
    assert loaded.config.model == config
    x = torch.rand(2, config.C, 32, 32)
    with torch.no_grad():
        a, b = net(x, probe), loaded.net(x, loaded.probe)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
