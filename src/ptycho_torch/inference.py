"""Seed command ``python -m ptycho_torch.inference`` (console script ``ptycho_inference``).

Same flags as ``ptychopinn infer``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ptychopinn.cli import seed_main


def main(argv: Sequence[str] | None = None) -> int:
    return seed_main("infer", argv)


if __name__ == "__main__":
    sys.exit(main())
