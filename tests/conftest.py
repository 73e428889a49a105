"""Shared fixtures: device, rng, a tiny simulated scan, a tiny bundle, the CLI as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

CliRunner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def tiny_scan():
    """64 patterns of 32 x 32 of the natural image at 10^6 photons (read-only: do not edit)."""
    from ptychopinn.data.simulate import simulate_scan

    return simulate_scan(n=32, n_positions=64, object_kind="image", photons_per_pattern=1e6, seed=0)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_scan):
    """An untrained (seeded) default-recipe network for ``tiny_scan``, as a Bundle."""
    from ptychopinn.bundle import Bundle
    from ptychopinn.config import Config, ModelConfig
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.models import build_network
    from ptychopinn.physics.functional import normalize_probe

    config = Config(model=ModelConfig(N=32, n_filters_scale=0.25))
    torch.manual_seed(0)
    net = build_network(config.model).eval()
    probe = normalize_probe(torch.from_numpy(tiny_scan.probe))
    net.set_probe(probe)
    return Bundle(config, Normalization.from_scan(tiny_scan), net, probe, manifest={})


@pytest.fixture(scope="session")
def run_cli() -> CliRunner:
    """``run_cli(*args, cwd=..., module="ptychopinn.cli", env=None)``: a real subprocess."""

    def run(
        *args: str, cwd: Path, module: str = "ptychopinn.cli", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, **(env or {})},
        )

    return run


@pytest.fixture(scope="session")
def user_error() -> Callable[..., None]:
    """``user_error(result, *fragments)``: exit 2, one stderr line holding every fragment."""

    def check(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
        assert result.returncode == 2, result.stdout + result.stderr
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        assert "Traceback" not in result.stderr
        assert len(lines) == 1, result.stderr
        for fragment in fragments:
            assert fragment in lines[0], lines[0]

    return check
