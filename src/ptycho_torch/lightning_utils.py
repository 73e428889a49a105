"""Checkpoint look-up for Ptychodus (``ptycho_torch.lightning_utils``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["find_best_checkpoint"]


def find_best_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of a training run to reconstruct with, or None.

    Looks in ``run_dir/checkpoints`` (where ptychopinn writes them), then anywhere under
    ``run_dir``: the best (lowest monitored loss) ``best-*.ckpt`` first, then ``last.ckpt``,
    then the newest ``*.ckpt``. With several ``best-*`` files the newest wins.
    """
    root = Path(run_dir)
    if not root.is_dir():
        return None
    for folder, pattern in ((root / "checkpoints", "*.ckpt"), (root, "**/*.ckpt")):
        found = sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not found:
            continue
        best = [p for p in found if p.name.startswith("best")]
        if best:
            return best[-1]
        last = [p for p in found if p.name == "last.ckpt"]
        return last[-1] if last else found[-1]
    return None
