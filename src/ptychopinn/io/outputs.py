"""Output directories: never overwrite an earlier run's results unless told to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ptychopinn.errors import OutputExistsError


def refuse_existing(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    """Raise when ``out_dir`` already holds any of ``names`` and ``overwrite`` is off."""
    existing = [n for n in names if (Path(out_dir) / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out_dir}: already holds {', '.join(existing)} from an earlier run; pass --overwrite"
        )
