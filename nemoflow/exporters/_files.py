"""How exporters create the files they write.

Traces hold prompts and tool arguments: files are created ``0o600`` and directories ``0o700``
(both before the umask, both configurable), a symbolic link or anything but a regular file at
the final path component is refused before anything is written, and a file is truncated only
when nemoflow created it or was told to (``AtofExporterMode.Overwrite``).
"""

from __future__ import annotations

import errno
import os
import stat

from .._types import NemoFlowError

FILE_MODE = 0o600
DIR_MODE = 0o700

_WRITE = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


class UnsafeFileError(OSError, NemoFlowError):
    """A path nemoflow refuses to write: a symbolic link, or not a regular file."""


def check_mode(value, what: str) -> int:
    """``value`` as permission bits, or ``ValueError`` / ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (e.g. 0o600), not {type(value).__name__}")
    if not 0 <= value <= 0o777:
        raise ValueError(f"{what} must be permission bits between 0o000 and 0o777")
    return value


def make_dirs(directory: str, mode: int) -> None:
    """Create ``directory`` and its missing parents, each with ``mode``; existing ones are kept."""
    missing = []
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise


def refuse_unsafe(path: str, st: os.stat_result) -> None:
    """Raise ``UnsafeFileError`` unless ``st`` (from ``lstat``) is a regular file."""
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(errno.ELOOP, "nemoflow: refusing to write through a symbolic link",
                              path)
    if not stat.S_ISREG(st.st_mode):
        code = errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL
        raise UnsafeFileError(code, "nemoflow: refusing to write what is not a regular file", path)


def file_id(st: os.stat_result) -> tuple:
    """What identifies a file across renames: device and inode."""
    return (st.st_dev, st.st_ino)


def create(path: str, mode: int, *, append: bool = True) -> int:
    """A new file at ``path`` (``FileExistsError`` if anything is there, a dangling link too)."""
    flags = _WRITE | os.O_CREAT | os.O_EXCL | (os.O_APPEND if append else 0)
    return os.open(path, flags, mode)


def open_existing(path: str, *, truncate: bool, expect: tuple | None = None) -> int:
    """The regular file at ``path``, opened to append; ``expect`` is its ``file_id``, if known."""
    st = os.lstat(path)
    refuse_unsafe(path, st)
    # O_NONBLOCK: a FIFO swapped in after the lstat must not block the open
    try:
        fd = os.open(path, _WRITE | os.O_APPEND | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
            raise UnsafeFileError(exc.errno, "nemoflow: refusing to write what is not a regular "
                                  "file", path) from None
        raise
    try:
        now = os.fstat(fd)
        refuse_unsafe(path, now)
        if file_id(now) != (expect or file_id(st)):
            raise UnsafeFileError(errno.ESTALE, "nemoflow: the file was replaced while being "
                                  "opened", path)
        os.set_blocking(fd, True)
        if truncate:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_for_writing(path: str, mode: int, *, truncate: bool) -> int:
    """``path`` opened to append by the file policy: created if missing, else a regular file."""
    for _ in range(8):  # a file removed or created between our two calls: look again
        try:
            return create(path, mode)
        except FileExistsError:
            pass
        try:
            return open_existing(path, truncate=truncate)
        except FileNotFoundError:
            continue
    raise OSError(errno.EAGAIN, "nemoflow: the file keeps appearing and disappearing", path)
