"""Lightning data module: groups, train/validation split, loaders."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Subset

from ptychopinn.config import Config
from ptychopinn.data.dataset import GroupDataset, Normalization
from ptychopinn.data.grouping import Groups, group_positions
from ptychopinn.io.scan import ScanData

logger = logging.getLogger(__name__)


class GroupDataModule(L.LightningDataModule):
    """Training groups from ``train_scan``; validation on ``val_scan`` or a held-out split.

    Grouping is seeded, so every rank of a distributed run builds the same groups;
    Lightning's distributed sampler then shards them.
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

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        t, m = self.config.training, self.config.model
        labels = m.mode == "supervised"

        def groups_of(scan: ScanData) -> Groups:
            return group_positions(
                scan.positions_px, m.gridsize, t.n_groups, t.seed, scan.scan_index, m.group_stride
            )

        groups = groups_of(self.train_scan)
        full = GroupDataset(self.train_scan, groups, self.normalization, with_labels=labels)
        train_rows = np.arange(len(full))
        if self.val_scan is not None:
            self.val_set = GroupDataset(
                self.val_scan,
                groups_of(self.val_scan),
                self.normalization.for_scan(self.val_scan),
                with_labels=labels and _has_labels(self.val_scan),
            )
        else:
            n_val = int(round(len(full) * t.val_fraction))
            if n_val > 0 and len(full) - n_val >= 1:
                order = np.random.default_rng(t.seed).permutation(len(full))
                self.val_set = Subset(full, order[:n_val].tolist())
                train_rows = np.sort(order[n_val:])
        self.train_set = full if len(train_rows) == len(full) else Subset(full, train_rows.tolist())
        _report_coverage(groups.indices[train_rows], len(self.train_scan.positions_px), m.gridsize)

    def _loader(self, dataset: GroupDataset | Subset, shuffle: bool) -> DataLoader:
        t = self.config.training
        return DataLoader(
            dataset,
            batch_size=t.batch_size,
            shuffle=shuffle,
            num_workers=t.num_workers,
            persistent_workers=t.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)


def _has_labels(scan: ScanData) -> bool:
    return scan.patches is not None or scan.object is not None


def _report_coverage(indices: np.ndarray, n_patterns: int, gridsize: int) -> None:
    """Say how many of the scan's patterns the training groups hold.

    At gridsize 1 a subset (``n_groups`` < patterns) is the user's choice. At gridsize > 1
    a few groups of neighbours leave whole regions of the scan out of training, which the
    network must then guess; that deserves a warning.
    """
    covered = len(np.unique(indices))
    if covered == n_patterns:
        return
    log = logger.warning if gridsize > 1 else logger.info
    log(
        "the %d training groups hold %d of the %d patterns; the network never trains on "
        "the other %d (n_groups: omit it to seed a group at every pattern)",
        len(indices),
        covered,
        n_patterns,
        n_patterns - covered,
    )
