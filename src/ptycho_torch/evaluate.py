"""Seed command ``python -m ptycho_torch.evaluate`` (console script ``ptycho_evaluate``).

Same flags as ``ptychopinn evaluate``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ptychopinn.cli import seed_main


def main(argv: Sequence[str] | None = None) -> int:
    return seed_main("evaluate", argv)


if __name__ == "__main__":
    sys.exit(main())
