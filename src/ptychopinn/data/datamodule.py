"""Lightning data module: overlap groups, train/validation split, an epoch's draw, loaders."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Sampler, Subset

from ptychopinn.config import Config
from ptychopinn.data.dataset import GroupDataset, Normalization
from ptychopinn.data.grouping import Groups, training_groups
from ptychopinn.io.scan import ScanData

logger = logging.getLogger(__name__)

#: An epoch draws one group per training pattern, but at least and at most this many: a
#: scan of a few hundred patterns still gets a few hundred optimiser steps per epoch, and a
#: scan of 10^5 patterns an epoch of minutes rather than hours (a fresh draw each epoch).
MIN_GROUPS_PER_EPOCH = 512
MAX_GROUPS_PER_EPOCH = 4096


@dataclass(frozen=True)
class EpochPlan:
    """How much one epoch of training is.

    Attributes
    ----------
    n_groups : training groups available (one seeded at each training pattern by default)
    groups_per_epoch : groups drawn per epoch
    groups_per_step : groups per optimiser step (``batch_size`` network inputs, rounded)
    steps_per_epoch : optimiser steps per epoch
    """

    n_groups: int
    groups_per_epoch: int
    groups_per_step: int
    steps_per_epoch: int


def plan_epoch(config: Config, n_groups: int) -> EpochPlan:
    """Groups per epoch and per step for ``n_groups`` training groups."""
    t, m = config.training, config.model
    per_epoch = t.groups_per_epoch or min(max(n_groups, MIN_GROUPS_PER_EPOCH), MAX_GROUPS_PER_EPOCH)
    per_step = max(1, round(t.batch_size / m.K))
    return EpochPlan(n_groups, per_epoch, per_step, -(-per_epoch // per_step))


class EpochSampler(Sampler[int]):
    """``per_epoch`` indices into ``n`` items per epoch: shuffled permutations, repeated
    when ``per_epoch > n`` and cut when smaller, drawn from ``(seed, epoch)`` so that every
    rank of a distributed run draws the same, and a new draw each epoch."""

    def __init__(self, n: int, per_epoch: int, seed: int):
        self.n, self.per_epoch, self.seed = n, per_epoch, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        # Lightning sets the epoch of a sampler it was given; under a distributed run it wraps
        # the sampler, which then draws once per epoch on every rank: count the epochs here
        self.epoch += 1
        rounds = -(-self.per_epoch // self.n)
        order = np.concatenate([rng.permutation(self.n) for _ in range(rounds)])
        return iter(order[: self.per_epoch].tolist())


class GroupDataModule(L.LightningDataModule):
    """Training groups from ``train_scan``; validation on ``val_scan`` or a held-out split.

    Grouping is seeded, so every rank of a distributed run builds the same groups;
    Lightning's distributed sampler then shards each epoch's draw.
    """

    def __init__(
        self,
        config: Config,
        train_scan: ScanData,
        normalization: Normalization,
        val_scan: ScanData | None = None,
    ):
        super().__init__()
        self.config = config
        self.train_scan = train_scan
        self.val_scan = val_scan
        self.normalization = normalization
        self.train_set: GroupDataset | Subset | None = None
        self.val_set: GroupDataset | Subset | None = None
        self.plan: EpochPlan | None = None

    def groups_of(self, scan: ScanData) -> Groups:
        m, t = self.config.model, self.config.training
        return training_groups(
            scan.positions_px,
            m.gridsize,
            m.overlap_grid,
            m.overlap_stride,
            t.n_groups,
            t.seed,
            scan.scan_index,
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        t, m = self.config.training, self.config.model
        labels = m.mode == "supervised"
        groups = self.groups_of(self.train_scan)
        full = GroupDataset(self.train_scan, groups, self.normalization, with_labels=labels)
        train_rows = np.arange(len(full))
        n_val = 0
        if self.val_scan is not None:
            self.val_set = GroupDataset(
                self.val_scan,
                self.groups_of(self.val_scan),
                self.normalization.for_scan(self.val_scan),
                with_labels=labels and _has_labels(self.val_scan),
            )
        else:
            n_val = int(round(len(full) * t.val_fraction))
            if n_val > 0 and len(full) - n_val >= 1:
                order = np.random.default_rng(t.seed).permutation(len(full))
                self.val_set = Subset(full, order[:n_val].tolist())
                train_rows = np.sort(order[n_val:])
            else:
                n_val = 0
        self.train_set = full if len(train_rows) == len(full) else Subset(full, train_rows.tolist())
        self.plan = plan_epoch(self.config, len(train_rows))
        report_coverage(groups, train_rows, self.train_scan.n_patterns, t.n_groups, n_val)

    def _loader(self, dataset: GroupDataset | Subset, train: bool) -> DataLoader:
        t = self.config.training
        assert self.plan is not None
        sampler = EpochSampler(len(dataset), self.plan.groups_per_epoch, t.seed) if train else None
        return DataLoader(
            dataset,
            batch_size=self.plan.groups_per_step,
            sampler=sampler,
            num_workers=t.num_workers,
            persistent_workers=t.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, train=False)


def _has_labels(scan: ScanData) -> bool:
    return scan.patches is not None or scan.object is not None


def report_coverage(
    groups: Groups, train_rows: np.ndarray, n_patterns: int, n_groups: int | None, n_val: int
) -> None:
    """Say how many of the scan's patterns the training groups hold, and why not all.

    Patterns that no training group holds are never trained on; the network must guess
    their patches. That has two causes, named separately: ``n_groups`` below the number of
    patterns, and the validation split (groups held out, with their patterns unless other
    groups hold them too).
    """
    covered = len(np.unique(groups.indices[train_rows]))
    if covered == n_patterns:
        return
    missing = n_patterns - covered
    causes = []
    if n_groups is not None and n_groups < n_patterns:
        causes.append(f"--n_groups {n_groups} seeds groups at {len(groups)} of the patterns")
    if n_val:
        causes.append(
            f"the validation split holds out {n_val} groups (--val_fraction; 0 trains on every "
            "group, --val_data validates on another scan)"
        )
    chosen = n_val == 0 and bool(causes)  # only the user's --n_groups: their choice
    (logger.info if chosen else logger.warning)(
        "the %d training groups hold %d of the %d patterns; the network never trains on the "
        "other %d: %s",
        len(train_rows),
        covered,
        n_patterns,
        missing,
        "; ".join(causes) or "they are too far from the groups' lattices",
    )
