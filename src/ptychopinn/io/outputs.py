"""Output sets: written whole or not at all, never over an earlier run unless asked.

:func:`output_set` is the one policy of every command that writes a directory of results
(``infer``, ``evaluate``, ``demo``): everything is written into a hidden temporary sibling,
which replaces the output directory in one rename when the work succeeded. A failure, a
signal or a full disk leaves the earlier outputs as they were and no partial ones. The
output directory may not exist yet, be empty, or hold an earlier output set of the same
command (replaced only with ``overwrite``); a directory holding anything else is refused, so
``--overwrite`` can never delete a user's other files.

:func:`check_output_file` is the same policy for a single file (``simulate``): its suffix
decides its format.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from ptychopinn.errors import OutputError, OutputExistsError
from ptychopinn.io.atomic import umask

#: Permissions of the directories written (before the umask), as ``mkdir`` gives.
DIR_MODE = 0o777


def refuse_existing(out_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    """Raise when ``out_dir`` already holds any of ``names`` and ``overwrite`` is off."""
    existing = [n for n in names if (Path(out_dir) / n).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out_dir}: already holds {', '.join(existing)} from an earlier run; pass --overwrite"
        )


def check_output_file(path: Path, suffixes: dict[str, str], overwrite: bool) -> str:
    """The format of an output file from its suffix; refused: another suffix, a directory,
    an existing file without ``overwrite``, a parent that is not a directory."""
    kind = suffixes.get(path.suffix)
    if kind is None:
        expected = " or ".join(sorted(suffixes))
        raise OutputError(
            f"{path}: the suffix decides the format; expected {expected}, got "
            f"{path.suffix or 'none'!r}"
        )
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; expected a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists; pass --overwrite to replace it")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputError(f"{path.parent}: is not a directory")
    return kind


def _check_directory(out: Path, names: Sequence[str], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    if not out.is_dir():
        return
    present = sorted(p.name for p in out.iterdir())
    foreign = [n for n in present if n not in names]
    if foreign:
        raise OutputError(
            f"{out}: holds files that are not this command's outputs ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}); choose a new or empty directory"
        )
    if present and not overwrite:
        raise OutputExistsError(
            f"{out}: already holds {', '.join(present)} from an earlier run; pass --overwrite"
        )


@contextlib.contextmanager
def output_set(
    out_dir: str | os.PathLike[str], names: Sequence[str], overwrite: bool
) -> Iterator[Path]:
    """Yield a temporary directory to write an output set into; commit it as ``out_dir``.

    ``names`` are the files and directories the command may write. The checks run before
    any work (a refused run costs nothing) and again at the commit (another run may have
    finished meanwhile: then this one's outputs are dropped with an error, the other's kept).
    With ``overwrite`` the earlier set is moved aside, the new one renamed into place, and
    the earlier one deleted.
    """
    out = Path(out_dir)
    _check_directory(out, names, overwrite)
    with os_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(tmp, DIR_MODE & ~umask())  # mkdtemp makes it 0700
        yield tmp
        with os_errors(out):
            _commit(tmp, out, names, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _commit(tmp: Path, out: Path, names: Sequence[str], overwrite: bool) -> None:
    _check_directory(out, names, overwrite)
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)  # put the earlier set back
        raise
    shutil.rmtree(old, ignore_errors=True)


_OS_MESSAGES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EEXIST: "exists",
    errno.ENOTDIR: "a path component is not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "file name too long",
}


def os_error_message(exc: OSError, where: str | os.PathLike[str] | None = None) -> str:
    """One line for an OS error: the path and what went wrong."""
    what = _OS_MESSAGES.get(exc.errno or -1, exc.strerror or str(exc))
    path = exc.filename or where or ""
    return f"{path}: {what}" if path else what


@contextlib.contextmanager
def os_errors(where: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Turn an OS error (full disk, read-only file system, permissions, ...) into an
    :class:`OutputError` of one line."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, PermissionError, NotADirectoryError)) or (
            exc.errno in _OS_MESSAGES
        ):
            raise OutputError(os_error_message(exc, where)) from exc
        raise
