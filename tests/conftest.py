"""Shared fixtures: device, rng, tiny simulated scans."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
