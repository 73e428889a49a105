"""Memory budgets: a large allocation is estimated and refused before it is made.

A glitched scan position far from the others, an absurd step or jitter in ``simulate``, or a
compressed file that inflates a thousandfold would otherwise ask for terabytes and get the
process killed (or the machine swapping). :func:`check_allocation` compares an estimate with
the budget: half of the machine's physical memory unless the caller gives one
(``--max_memory_gb`` on the command line).
"""

from __future__ import annotations

import os

from ptychopinn.errors import DataError

GIB = 1024**3
#: Share of the physical memory one allocation may take by default.
DEFAULT_FRACTION = 0.5


class MemoryBudgetError(DataError):
    """An allocation the input asks for would not fit the memory budget."""


def physical_memory_bytes() -> int:
    """The machine's physical memory (16 GiB where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 16 * GIB


def budget_bytes(max_memory_gb: float | None = None) -> int:
    """The budget of one allocation: ``max_memory_gb``, or half the physical memory."""
    if max_memory_gb is not None:
        return int(max_memory_gb * GIB)
    return int(DEFAULT_FRACTION * physical_memory_bytes())


def check_allocation(nbytes: float, what: str, max_memory_gb: float | None = None) -> None:
    """Raise :class:`MemoryBudgetError` when ``nbytes`` exceed the budget.

    ``what`` names the allocation and its cause, e.g. ``"scan.npz: a 50000 x 50000 px
    canvas for the positions"``.
    """
    budget = budget_bytes(max_memory_gb)
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{what} needs {nbytes / GIB:.3g} GiB, over the budget of {budget / GIB:.3g} GiB "
            f"({'--max_memory_gb' if max_memory_gb is not None else 'half the memory'}; "
            "--max_memory_gb raises it)"
        )
