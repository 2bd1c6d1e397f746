"""ATOF JSONL: one canonical event per line, byte-identical to ``event.to_json()``.

The lines are encoded by the core's C encoder and written by the delivery thread with the GIL
released; the traced thread only records the event. The configuration follows NeMo Flow's
(``output_directory``, ``filename``, ``mode``), with optional size-based rotation on top.
"""

from __future__ import annotations

import enum
import os
import time

from .._backend import core as _core
from ._names import claim, release

__all__ = ["AtofExporter", "AtofExporterConfig", "AtofExporterMode"]

class AtofExporterMode(enum.Enum):
    """What happens to an existing file: appended to, or replaced."""

    Append = "append"
    Overwrite = "overwrite"


class AtofExporterConfig:
    """Where and how an ``AtofExporter`` writes.

    ``filename`` may use ``{timestamp}`` (UTC, ``YYYYmmddTHHMMSSZ``) and ``{pid}``; empty means
    ``atof-{timestamp}-{pid}.jsonl``. ``max_bytes`` > 0 rotates the file past that size, keeping
    ``backup_count`` older files as ``name.1`` (newest) … ``name.N``.
    """

    def __init__(self, output_directory: str = ".", filename: str = "",
                 mode: AtofExporterMode = AtofExporterMode.Append, *, max_bytes: int = 0,
                 backup_count: int = 5):
        self.output_directory = output_directory
        self.filename = filename
        self.mode = mode
        self.max_bytes = max_bytes
        self.backup_count = backup_count

    def resolve_path(self) -> str:
        """The file path this configuration names now."""
        pattern = self.filename or "atof-{timestamp}-{pid}.jsonl"
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = pattern.format(timestamp=stamp, pid=os.getpid())
        return os.path.join(os.fspath(self.output_directory), name)

    def __repr__(self):
        return (f"AtofExporterConfig(output_directory={self.output_directory!r}, "
                f"filename={self.filename!r}, mode={self.mode}, max_bytes={self.max_bytes})")


class AtofExporter:
    """Writes every event as an ATOF JSONL line while registered under at least one name."""

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
        self._config = config
        self._path = os.path.abspath(config.resolve_path())
        os.makedirs(os.path.dirname(self._path), exist_ok=True)
        truncate = config.mode is AtofExporterMode.Overwrite
        fd = self._open(truncate)
        self._sink = _core.LineSink(os.path.basename(self._path), fd, config.max_bytes,
                                    self._rotate, os.fstat(fd).st_size)
        self._names: list = []
        self._closed = False

    def _open(self, truncate: bool) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        if truncate:
            flags |= os.O_TRUNC
        return os.open(self._path, flags, 0o644)

    def _rotate(self) -> int:
        # Called by the delivery thread, between two batches: no line is ever split.
        os.close(self._sink.fd)
        keep = self._config.backup_count
        if keep > 0:
            for i in range(keep - 1, 0, -1):
                older = f"{self._path}.{i}"
                if os.path.exists(older):
                    os.replace(older, f"{self._path}.{i + 1}")
            os.replace(self._path, f"{self._path}.1")
        return self._open(True)

    @property
    def path(self) -> str:
        """The JSONL file being written."""
        return self._path

    @property
    def name(self) -> str:
        return self._sink.name

    def register(self, name: str) -> None:
        """Start writing events, under ``name`` (``AlreadyExistsError`` if it is taken)."""
        if claim(self, name):
            self._sink.name = name
            _core.attach(self._sink)

    def deregister(self, name: str) -> bool:
        """Stop writing under ``name``; what was emitted before is still written first."""
        found, last = release(self, name)
        if last:
            _core.detach(self._sink)
        return found

    def force_flush(self) -> None:
        """Write everything emitted so far; raises the last write error (OSError), if any."""
        if not self._closed:
            _core.flush()
        self._sink.raise_error()

    def shutdown(self) -> None:
        """Flush, deregister every name and close the file. Safe to call twice."""
        if self._closed:
            return
        for name in list(self._names):
            self.deregister(name)
        self._closed = True
        try:
            os.close(self._sink.fd)
        except OSError:
            pass

    def stats(self) -> dict:
        """Events and bytes written, and write errors."""
        return self._sink.stats()

    def __repr__(self):
        return f"<AtofExporter {self._path}>"
