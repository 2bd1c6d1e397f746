"""ATOF JSONL: one canonical event per line, byte-identical to ``event.to_json()``.

The lines are encoded by the core's C encoder and written by the delivery thread with the GIL
released; the traced thread only records the event. The configuration follows NeMo Flow's
(``output_directory``, ``filename``, ``mode``), with optional size-based rotation on top.

A rotating exporter (``max_bytes`` > 0) gives each forked child a file of its own, named with
the child's pid (``{pid}`` in the pattern, else ``trace.jsonl`` → ``trace.<pid>.jsonl``): a
file's size and backups are one process's to manage. Without rotation parent and children
append whole batches to the same file.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
import time
import weakref

from .._backend import core as _core
from ._base import Exporter
from ._files import (
    DIR_MODE,
    FILE_MODE,
    UnsafeFileError,
    check_mode,
    create,
    file_id,
    make_dirs,
    open_existing,
    open_for_writing,
)

__all__ = ["AtofExporter", "AtofExporterConfig", "AtofExporterMode"]

# exporters that move to a file of their own in a forked child
_rotating: weakref.WeakSet = weakref.WeakSet()


class AtofExporterMode(enum.Enum):
    """What happens to an existing regular file: appended to, or truncated first."""

    Append = "append"
    Overwrite = "overwrite"


class AtofExporterConfig:
    """Where and how an ``AtofExporter`` writes.

    ``filename`` may use ``{timestamp}`` (UTC, ``YYYYmmddTHHMMSSZ``) and ``{pid}``; empty means
    ``atof-{timestamp}-{pid}.jsonl``. ``max_bytes`` > 0 rotates the file past that size, keeping
    ``backup_count`` older files as ``name.1`` (newest) … ``name.N``. New files get
    ``file_mode`` and new directories ``dir_mode`` (before the umask).
    """

    def __init__(self, output_directory: str = ".", filename: str = "",
                 mode: AtofExporterMode = AtofExporterMode.Append, *, max_bytes: int = 0,
                 backup_count: int = 5, file_mode: int = FILE_MODE, dir_mode: int = DIR_MODE):
        self.output_directory = output_directory
        self.filename = filename
        self.mode = mode
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.file_mode = file_mode
        self.dir_mode = dir_mode

    def resolve_path(self) -> str:
        """The file path this configuration names now."""
        return self._path_for(time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()), os.getpid())

    def _path_for(self, stamp: str, pid: int) -> str:
        pattern = self.filename or "atof-{timestamp}-{pid}.jsonl"
        name = pattern.format(timestamp=stamp, pid=pid)
        return os.path.join(os.fspath(self.output_directory), name)

    def __repr__(self):
        return (f"AtofExporterConfig(output_directory={self.output_directory!r}, "
                f"filename={self.filename!r}, mode={self.mode}, max_bytes={self.max_bytes}, "
                f"backup_count={self.backup_count}, file_mode={self.file_mode:#o}, "
                f"dir_mode={self.dir_mode:#o})")


class AtofExporter(Exporter):
    """Writes every event as an ATOF JSONL line while registered under at least one name.

    The lines are the core's: the pipeline feeds this exporter's ``LineSink``, which encodes
    and writes them without the GIL, never ``export()``.
    """

    def __init__(self, config: AtofExporterConfig | None = None):
        config = AtofExporterConfig() if config is None else config
        if not isinstance(config, AtofExporterConfig):
            raise TypeError(f"expected an AtofExporterConfig, got {type(config).__name__}")
        if not isinstance(config.mode, AtofExporterMode):
            raise TypeError("config.mode must be an AtofExporterMode")
        if not isinstance(config.max_bytes, int) or config.max_bytes < 0:
            raise ValueError("config.max_bytes must be an int >= 0")
        if not isinstance(config.backup_count, int) or config.backup_count < 0:
            raise ValueError("config.backup_count must be an int >= 0")
        check_mode(config.file_mode, "config.file_mode")
        check_mode(config.dir_mode, "config.dir_mode")
        self._config = config
        self._stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._path = os.path.abspath(config._path_for(self._stamp, os.getpid()))
        make_dirs(os.path.dirname(self._path), config.dir_mode)
        fd = open_for_writing(self._path, config.file_mode,
                              truncate=config.mode is AtofExporterMode.Overwrite)
        st = os.fstat(fd)
        self._file: tuple | None = file_id(st)
        self._sink = _core.LineSink(os.path.basename(self._path), fd, config.max_bytes,
                                    self._reopen, st.st_size)
        super().__init__()
        self._rotation_warned = False
        if config.max_bytes:
            _rotating.add(self)

    def _reopen(self, rotate: bool) -> int:
        # Called by the delivery thread between two batches (no line is ever split), after the
        # sink closed its descriptor: when the file is due for rotation, or to take up writing
        # again after the file could not be opened.
        path = self._path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None  # removed (log cleanup, say): a new file starts
        if st is not None and stat.S_ISREG(st.st_mode) and file_id(st) == self._file:
            if not rotate:
                return open_existing(path, truncate=False, expect=self._file)
            try:
                self._shift_backups()
            except OSError as exc:
                # the file stays and takes the lines past max_bytes: late, but nothing is lost
                if not self._rotation_warned:
                    self._rotation_warned = True
                    _core._warn_quietly(f"nemoflow: could not rotate {path}: {exc}; writing "
                                        "on past max_bytes")
                return open_existing(path, truncate=False, expect=self._file)
        elif st is not None:
            raise UnsafeFileError(errno.EEXIST, "nemoflow: the file was replaced by one nemoflow "
                                  "did not create; not writing to it", path)
        fd = create(path, self._config.file_mode)
        self._file = file_id(os.fstat(fd))
        return fd

    def _shift_backups(self) -> None:
        path, keep = self._path, self._config.backup_count
        if keep == 0:
            os.unlink(path)
            return
        # rename() never follows a link at either end: backups are moved, never written through
        for i in range(keep - 1, 0, -1):
            older = f"{path}.{i}"
            if os.path.lexists(older):
                os.replace(older, f"{path}.{i + 1}")
        os.replace(path, f"{path}.1")

    def _forked(self) -> None:
        # In a forked child, before anything is delivered: a file of its own (see the module
        # docstring). Should it fail, the sink holds no file and retries at its next batch.
        if self._closed:
            return
        config = self._config
        path = os.path.abspath(config._path_for(self._stamp, os.getpid()))
        if path == os.path.abspath(config._path_for(self._stamp, 0)):  # no {pid} in the pattern
            stem, ext = os.path.splitext(path)
            path = f"{stem}.{os.getpid()}{ext}"
        self._path = path
        try:
            fd = open_for_writing(path, config.file_mode,
                                  truncate=config.mode is AtofExporterMode.Overwrite)
        except Exception:
            self._file = None
            self._sink._set_fd(-1, 0)
            return
        st = os.fstat(fd)
        self._file = file_id(st)
        self._sink._set_fd(fd, st.st_size)

    @property
    def path(self) -> str:
        """The JSONL file being written."""
        return self._path

    @property
    def name(self) -> str:
        return self._sink.name

    def _consumer(self, name):
        if name is not None:
            self._sink.name = name  # what diagnostics() shows
        return self._sink

    def export(self, events) -> None:
        raise TypeError("an AtofExporter's lines are written by the core, not through export()")

    def force_flush(self, timeout: float | None = None) -> None:
        """Write everything emitted so far; raises the last write error (OSError), if any."""
        if not self._closed:
            _core.flush(timeout)
        self._sink.raise_error()

    def _close(self, timeout: float | None) -> None:
        # after every name is gone, so everything emitted before was written first
        _rotating.discard(self)
        self._sink.close()

    def stats(self) -> dict:
        """Events and bytes written, events and bytes lost, and write errors."""
        return self._sink.stats()

    def __repr__(self):
        return f"<AtofExporter {self._path}>"


def _after_fork_in_child():
    for exporter in list(_rotating):
        exporter._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
