"""Seed command ``python -m ptycho_torch.train`` (console script ``ptycho_train``).

Same flags as ``ptychopinn train``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ptychopinn.cli import seed_main


def main(argv: Sequence[str] | None = None) -> int:
    return seed_main("train", argv)


if __name__ == "__main__":
    sys.exit(main())
