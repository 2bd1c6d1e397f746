"""Exporters: each consumes the event stream from the pipeline's delivery thread, never on the
traced thread. Errors are counted in ``nemoflow.diagnostics()``, never raised into traced code."""

from ._files import UnsafeFileError
from .atif import AtifExporter, AtifFileExporter
from .atof import AtofExporter, AtofExporterConfig, AtofExporterMode
from .chrome import ChromeTraceExporter, validate_chrome_trace
from .memory import InMemoryRecorder

__all__ = ["AtifExporter", "AtifFileExporter", "AtofExporter", "AtofExporterConfig",
           "AtofExporterMode", "ChromeTraceExporter", "InMemoryRecorder", "UnsafeFileError",
           "validate_chrome_trace"]
