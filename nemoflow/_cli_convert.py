"""``nemoflow convert``: a recorded ATOF file through the exporters' own code.

Each event read from the file becomes an object with the attributes the live pipeline's events
have, and is handed to the exporter's ``export(batch)`` as the delivery thread would: the Chrome
trace, the OTLP spans and the ATIF trajectory are those the exporters would have written had
they been attached while the program ran.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

from .exporters._base import ExportError
from .exporters.chrome import ChromeTraceExporter

PROJECTIONS = ("full", "gen_ai", "openinference")
_BATCH = 1024


class WriteError(Exception):
    """An output that cannot be written or a collector that does not take the spans."""


class FileEvent:
    """An ATOF event read from a file, with the attributes an exporter reads."""

    __slots__ = ("kind", "uuid", "parent_uuid", "name", "timestamp_ns", "data", "metadata",
                 "category", "category_profile", "data_schema", "scope_category", "attributes",
                 "propagation_root_uuid", "otel_parent")

    def __init__(self, ev: dict, timestamp_ns: int):
        self.kind = ev["kind"]
        self.uuid = ev["uuid"]
        self.parent_uuid = ev["parent_uuid"]
        self.name = ev["name"]
        self.timestamp_ns = timestamp_ns
        self.data = ev.get("data")
        self.metadata = ev.get("metadata")
        self.category = ev.get("category")
        self.category_profile = ev.get("category_profile")
        self.data_schema = ev.get("data_schema")
        self.scope_category = ev.get("scope_category")
        attributes = ev.get("attributes")
        self.attributes = attributes if isinstance(attributes, list) else []
        root = ev.get("propagation_root_uuid")  # NeMo Relay writes it; nemoflow derives it
        self.propagation_root_uuid = root if isinstance(root, str) and root else None
        self.otel_parent = None


def _batches(events):
    for i in range(0, len(events), _BATCH):
        yield events[i:i + _BATCH]


@contextlib.contextmanager
def _output(path: str, default_name: str):
    """A path to write to: ``path`` itself, or for ``-`` a temporary file copied to stdout."""
    if path != "-":
        yield path
        return
    directory = tempfile.mkdtemp(prefix="nemoflow-convert-")
    try:
        tmp = os.path.join(directory, default_name)
        yield tmp
        with open(tmp, "rb") as f:
            sys.stdout.flush()
            shutil.copyfileobj(f, sys.stdout.buffer)
            sys.stdout.buffer.flush()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _cannot_write(path: str, exc: BaseException) -> WriteError:
    reason = getattr(exc, "strerror", None) or str(exc)
    return WriteError(f"{path}: cannot write ({reason})")


class _FileChromeExporter(ChromeTraceExporter):
    """Scopes a file leaves open end at its last event, not at the time of conversion."""

    def __init__(self, path, end_ns, **options):
        super().__init__(path, **options)
        self._end_ns = end_ns

    def _now_ns(self):
        return self._end_ns if self._end_ns is not None else super()._now_ns()


def to_chrome(events: list, output: str, process_name: str) -> dict:
    """Write the Chrome trace of ``events`` (``FileEvent``) to ``output`` (``-``: stdout)."""
    last = max((ev.timestamp_ns for ev in events), default=None)
    with _output(output, "trace.json") as path:
        try:
            exporter = _FileChromeExporter(path, last, process_name=process_name)
        except (OSError, ValueError) as exc:
            raise _cannot_write(output, exc) from None
        try:
            for batch in _batches(events):
                exporter.export(batch)
        finally:
            try:
                exporter.shutdown()
            except OSError as exc:
                raise _cannot_write(output, exc) from None
        return exporter.stats()


def _otlp_config(projection: str, endpoint, service_name, headers, timeout: float, **file):
    from .exporters.otlp import OpenTelemetryConfig

    options: dict = {"timeout_millis": max(1, int(timeout * 1000))}
    if service_name is not None:
        options["service_name"] = service_name
    if headers:
        options["headers"] = headers
    if file:
        options.update(transport="otlp_json_file", mode="overwrite", **file)
    return OpenTelemetryConfig(projection, endpoint, **options)


def _run_otlp(config, events: list, where: str, timeout: float) -> dict:
    from .exporters.otlp import OpenTelemetrySubscriber

    try:
        exporter = OpenTelemetrySubscriber(config)
    except OSError as exc:
        raise _cannot_write(where, exc) from None
    except ValueError as exc:  # the collector's URL or a header
        raise WriteError(f"{where}: {exc}") from None
    try:
        for batch in _batches(events):
            exporter.export(batch)
        exporter.force_flush(timeout)
    except ExportError as exc:
        raise WriteError(f"{where}: {_export_reason(exc)}") from None
    finally:
        exporter.shutdown(timeout)
    return exporter.stats()


def _export_reason(exc: ExportError) -> str:
    text = str(exc)
    marker = "OTLP export failed: "
    return text[text.index(marker) + len(marker):] if marker in text else text


def to_otlp_json(events: list, output: str, projection: str, service_name=None,
                 timeout: float = 10.0) -> dict:
    """Write the OTLP/JSON lines of ``events`` to ``output`` (``-``: stdout)."""
    with _output(output, "trace.otlp.jsonl") as path:
        directory, name = os.path.split(os.path.abspath(path))
        config = _otlp_config(projection, None, service_name, None, timeout,
                              output_directory=directory, filename=name)
        return _run_otlp(config, events, output, timeout)


def send_otlp(events: list, url: str, projection: str, service_name=None, headers=None,
              timeout: float = 10.0) -> dict:
    """Send the spans of ``events`` to an OTLP/HTTP collector at ``url``."""
    try:
        config = _otlp_config(projection, url, service_name, headers, timeout)
    except ValueError as exc:
        raise WriteError(f"{url}: {exc}") from None
    return _run_otlp(config, events, url, timeout)
