"""Input paths: only regular files are opened (a FIFO blocks the reader, a device never ends)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ptychopinn.errors import DataError

_KINDS = (
    (stat.S_ISFIFO, "named pipe (FIFO)"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def check_regular_file(
    path: str | os.PathLike[str], what: str = "a file", error: type[Exception] = DataError
) -> Path:
    """``path`` as a Path if it is a regular file (links followed); else ``error``, one line.

    Checked with ``stat`` before anything opens it: opening a FIFO waits for a writer, and
    ``/dev/zero`` reads forever.
    """
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise error(f"{p}: file not found") from None
    except OSError as exc:
        raise error(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{p}: expected {what}, got a directory")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "special file")
        raise error(f"{p}: expected {what}, got a {kind}")
    return p
