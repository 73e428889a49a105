"""Nearest-neighbour grouping."""

from __future__ import annotations

import numpy as np
import pytest

from ptychopinn.data.grouping import group_positions
from ptychopinn.errors import DataError


def _raster(k: int = 6, step: float = 3.0) -> np.ndarray:
    g = np.arange(k) * step
    return np.array([(y, x) for y in g for x in g], dtype=np.float64)


def test_gridsize1_every_pattern_once():
    groups = group_positions(_raster(), 1)
    assert groups.indices.shape == (36, 1)
    assert np.array_equal(groups.indices[:, 0], np.arange(36))
    assert np.allclose(groups.offsets_px, 0)


def test_gridsize2_groups_are_nearest_neighbours():
    pos = _raster()
    groups = group_positions(pos, 2)
    assert groups.indices.shape == (36, 4)
    for row in groups.indices:
        members = pos[row]
        assert (
            np.max(np.linalg.norm(members - members.mean(0), axis=1))
            <= 3.0 * np.sqrt(2) / 2 * 2 + 1e-9
        )
        assert len(set(row)) == 4
    assert np.allclose(groups.centers_px[:, None] + groups.offsets_px, pos[groups.indices])


def test_n_groups_semantics_and_seed():
    pos = _raster()
    a = group_positions(pos, 2, n_groups=10, seed=3)
    b = group_positions(pos, 2, n_groups=10, seed=3)
    assert len(a) == 10 and np.array_equal(a.indices, b.indices)
    assert len(group_positions(pos, 1, n_groups=1000)) == 36  # larger than the scan: all


def test_groups_stay_within_one_object():
    pos = np.concatenate([_raster(), _raster()])
    scan_index = np.repeat([0, 1], 36)
    groups = group_positions(pos, 2, scan_index=scan_index)
    assert np.all(scan_index[groups.indices] == scan_index[groups.indices[:, :1]])


def test_too_few_positions():
    with pytest.raises(DataError, match="needs at least 4 positions"):
        group_positions(_raster(1), 2)
