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


def test_group_stride_spreads_members_on_a_lattice_of_scan_steps():
    pos = _raster(k=8, step=3.0)
    seed = 3 * 8 + 4  # an interior position, (9, 12)
    groups = group_positions(pos, 3, stride=2)
    assert groups.indices.shape == (64, 9)
    members = pos[groups.indices[seed]]
    ticks = np.array([-6.0, 0.0, 6.0])  # two scan steps apart, centred on the seed
    lattice = pos[seed] + np.stack(np.meshgrid(ticks, ticks, indexing="ij"), -1).reshape(9, 2)
    assert np.array_equal(members, lattice)  # row-major order, the seed in the middle
    assert np.allclose(groups.centers_px[seed], pos[seed])
    for row in groups.indices:  # at the scan's edge the lattice folds inwards, no repeats
        assert len(set(row)) == 9
    nearest = group_positions(pos, 3)
    spread = np.ptp(groups.offsets_px, axis=1).max(axis=1)
    assert np.median(spread) == pytest.approx(2 * np.median(np.ptp(nearest.offsets_px, 1).max(1)))


def test_group_stride_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="stride"):
        group_positions(_raster(), 2, stride=0)


def test_training_groups_that_leave_patterns_out_are_reported(caplog):
    """A few groups of neighbours leave regions of the scan untrained: say how many."""
    from ptychopinn.config import Config, ModelConfig, TrainingConfig
    from ptychopinn.data.datamodule import GroupDataModule
    from ptychopinn.data.dataset import Normalization
    from ptychopinn.data.simulate import simulate_scan

    scan = simulate_scan(n=32, n_positions=64, photons_per_pattern=1e5, seed=0)

    def setup(overlap_grid: int, n_groups: int | None, val_fraction: float = 0.0) -> list[str]:
        config = Config(
            model=ModelConfig(N=32, overlap_grid=overlap_grid),
            training=TrainingConfig(n_groups=n_groups, val_fraction=val_fraction),
        )
        caplog.clear()
        with caplog.at_level("INFO", logger="ptychopinn.data.datamodule"):
            GroupDataModule(config, scan, Normalization.from_scan(scan)).setup()
        return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]

    (message,) = setup(3, 4)  # 4 groups of 9 hold at most 36 of the 64 patterns
    held = int(message.split(" hold ")[1].split()[0])
    assert message.startswith("INFO the 4 training groups hold") and held <= 36
    assert f"the other {64 - held}" in message and "--n_groups 4" in message
    assert setup(3, None) == []  # every pattern seeds a group
    (subset,) = setup(1, 16)  # one pattern per group: a subset is the user's choice
    assert subset.startswith("INFO the 16 training groups hold 16 of the 64 patterns")
    # the validation split is named as the cause, and warned about
    (split,) = setup(1, None, val_fraction=0.1)
    assert split.startswith("WARNING the 58 training groups hold 58 of the 64 patterns")
    assert "validation split holds out 6 groups" in split and "--n_groups" not in split


def test_every_epoch_draws_anew_also_when_wrapped_for_distributed_training():
    """Lightning sets the epoch of a plain sampler but wraps it under DDP, where each rank
    then iterates it once per epoch: both ways every epoch is a new draw, the same on every
    rank."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    from ptychopinn.data.datamodule import EpochSampler

    plain = EpochSampler(100, 40, seed=3)
    plain.set_epoch(0)
    first = list(plain)
    plain.set_epoch(1)
    assert list(plain) != first
    plain.set_epoch(0)
    assert list(plain) == first  # set_epoch decides
    ranks = [DistributedSamplerWrapper(EpochSampler(100, 40, seed=3), num_replicas=2, rank=r, shuffle=False) for r in (0, 1)]  # fmt: skip
    epochs = [[list(w) for w in ranks] for _ in range(2)]
    assert sorted(epochs[0][0] + epochs[0][1]) == sorted(first)  # the ranks share one draw
    assert sorted(epochs[1][0] + epochs[1][1]) != sorted(first)  # and the next epoch is new
