"""``OpenTelemetryConfig`` / ``OpenTelemetrySubscriber`` (and NeMo Flow 0.2's
``OpenInferenceConfig`` / ``OpenInferenceSubscriber``): a projection, a transport and an
``OtlpExporter`` put together from one validated configuration."""

from __future__ import annotations

import os

from ._exporter import OtlpExporter
from ._model import InstrumentationScope, Resource
from ._sdk import _PROJECTION_OPTIONS as _SDK_OPTIONS
from ._sdk import OpenTelemetrySdkSubscriber
from ._transport import HttpBinaryTransport, OtlpJsonFileTransport, validate_headers
from .projections import (
    ProjectionDiagnostics,
    check_attribute_mappings,
    check_promote_prefixes,
    projection_for,
)

__all__ = ["OpenInferenceConfig", "OpenInferenceSubscriber", "OpenTelemetryConfig",
           "OpenTelemetryRuntimeDiagnostic", "OpenTelemetryRuntimeDiagnostics",
           "OpenTelemetrySubscriber"]

_TYPES = ("full", "gen_ai", "openinference")
_TRANSPORTS = ("http_binary", "otlp_json_file")
_ENV_HEADERS = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
_UNSET = object()


def _check_type(value) -> str:
    if value not in _TYPES:
        raise ValueError(f"type must be 'full', 'gen_ai', or 'openinference', got \"{value}\"")
    return value


def _check_transport(value) -> str:
    if value not in _TRANSPORTS:
        extra = " (gRPC is not supported)" if value == "grpc" else ""
        raise ValueError("transport must be 'http_binary' or 'otlp_json_file', "
                         f"got \"{value}\"{extra}")
    return value


def _check_str_dict(value, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{what} must be a dict[str, str]")
    return dict(value)


def _check_optional_str(value, what: str):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{what} must be a str or None")
    return value


def _check_count(value, what: str, minimum: int):
    if value is None:
        return None
    if type(value) is not int or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, not {value!r}")
    return value


class OpenTelemetryConfig:
    """Configuration of an ``OpenTelemetrySubscriber``.

    Two styles: ``OpenTelemetryConfig("openinference", "http://collector:4318", **options)``,
    checked at once; or NeMo Flow 0.2's ``OpenTelemetryConfig()`` followed by attribute
    assignments, checked when the subscriber is built.
    """

    _default_type = "full"
    _OPTIONS = ("transport", "service_name", "service_namespace", "service_version",
                "instrumentation_scope", "timeout_millis", "headers", "header_env",
                "resource_attributes", "mark_projection", "mark_exclude_names",
                "attribute_mappings", "promote_metadata_prefixes", "max_queue_size",
                "max_export_batch_size", "scheduled_delay_millis", "overflow", "compression",
                "output_directory", "filename", "mode")

    def __init__(self, otel_type=_UNSET, endpoint=None, **options):
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise TypeError(f"unknown OpenTelemetryConfig option(s): {', '.join(unknown)}")
        self._type = self._default_type
        self.endpoint = endpoint
        self._transport = "http_binary"
        self.service_name = "unknown_service"
        self.service_namespace = None
        self.service_version = None
        self.instrumentation_scope = "opentelemetry"
        self.timeout_millis = 3000
        self._headers: dict = {}
        self._header_env: dict = {}
        self._resource_attributes: dict = {}
        self.mark_projection = "inherit"
        self.mark_exclude_names = ["llm.chunk"]
        self._attribute_mappings: list = []
        self._promote: list = []
        self.max_queue_size = None
        self.max_export_batch_size = None
        self.scheduled_delay_millis = None
        self.overflow = None
        self.compression = None
        self.output_directory = "."
        self.filename = ""
        self.mode = "append"
        if otel_type is not _UNSET:
            self.type = otel_type
        for key, value in options.items():
            setattr(self, key, value)
        if otel_type is not _UNSET:
            self.validate()

    # --- checked properties -----------------------------------------------------------------

    @property
    def type(self) -> str:
        """The projection: ``"full"``, ``"gen_ai"`` or ``"openinference"``."""
        return self._type

    @type.setter
    def type(self, value) -> None:
        self._type = _check_type(value)

    @property
    def transport(self) -> str:
        """``"http_binary"`` (OTLP/HTTP protobuf) or ``"otlp_json_file"``."""
        return self._transport

    @transport.setter
    def transport(self, value) -> None:
        self._transport = _check_transport(value)

    @property
    def headers(self) -> dict:
        """Extra HTTP headers of every export request (a copy)."""
        return dict(self._headers)

    @headers.setter
    def headers(self, value) -> None:
        self._headers = validate_headers(_check_str_dict(value, "headers"))

    @property
    def header_env(self) -> dict:
        """Header names mapped to the environment variables holding their values (a copy)."""
        return dict(self._header_env)

    @header_env.setter
    def header_env(self, value) -> None:
        self._header_env = _check_str_dict(value, "header_env")

    @property
    def resource_attributes(self) -> dict:
        """Resource attributes added after ``service.*`` (a copy)."""
        return dict(self._resource_attributes)

    @resource_attributes.setter
    def resource_attributes(self, value) -> None:
        self._resource_attributes = _check_str_dict(value, "resource_attributes")

    @property
    def attribute_mappings(self) -> list:
        """``[{"key", "alias"}]``: copy an attribute's value under another name."""
        return [dict(m) for m in self._attribute_mappings]

    @attribute_mappings.setter
    def attribute_mappings(self, value) -> None:
        pairs = check_attribute_mappings(value or [])
        self._attribute_mappings = [{"key": k, "alias": a} for k, a in pairs]

    @property
    def promote_metadata_prefixes(self) -> list:
        """Metadata key prefixes copied to top-level span attributes."""
        return list(self._promote)

    @promote_metadata_prefixes.setter
    def promote_metadata_prefixes(self, value) -> None:
        self._promote = check_promote_prefixes(value or [])

    def set_header(self, key: str, value: str) -> None:
        """Add or replace one export header."""
        headers = dict(self._headers)
        headers[key] = value
        self._headers = validate_headers(_check_str_dict(headers, "headers"))

    def set_header_from_env(self, key: str, env_var: str) -> None:
        """Take a header's value from an environment variable when the subscriber is built."""
        self._header_env[key] = env_var
        self._header_env = _check_str_dict(self._header_env, "header_env")

    def set_resource_attribute(self, key: str, value: str) -> None:
        """Add or replace one resource attribute."""
        self._resource_attributes[key] = value
        self._resource_attributes = _check_str_dict(self._resource_attributes,
                                                    "resource_attributes")

    # --- validation -------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ``ValueError`` / ``TypeError`` if the configuration cannot be used."""
        _check_type(self._type)
        _check_transport(self._transport)
        if self._transport == "http_binary" and (
                not isinstance(self.endpoint, str) or not self.endpoint.strip()):
            raise ValueError("endpoint is required and must be nonblank")
        if not isinstance(self.service_name, str):
            raise TypeError("service_name must be a str")
        _check_optional_str(self.service_namespace, "service_namespace")
        _check_optional_str(self.service_version, "service_version")
        if not isinstance(self.instrumentation_scope, str):
            raise TypeError("instrumentation_scope must be a str")
        if type(self.timeout_millis) is not int or self.timeout_millis <= 0:
            raise ValueError(f"timeout_millis must be an int > 0, not {self.timeout_millis!r}")
        if self.mark_projection not in ("inherit", "event", "tool"):
            raise ValueError("mark_projection must be 'inherit', 'event' or 'tool', got "
                             f"\"{self.mark_projection}\"")
        names = self.mark_exclude_names
        if names is None or isinstance(names, str) or not all(isinstance(n, str)
                                                              for n in names):
            raise TypeError("mark_exclude_names must be a list of str")
        for what, minimum in (("max_queue_size", 1), ("max_export_batch_size", 1),
                              ("scheduled_delay_millis", 0)):
            _check_count(getattr(self, what), what, minimum)
        if self.overflow not in (None, "block", "drop"):
            raise ValueError('overflow must be "block" or "drop" (None: the pipeline\'s)')
        self.resolved_headers()

    def resolved_headers(self) -> dict:
        """``headers`` plus ``header_env`` resolved now; names unique ignoring ASCII case."""
        for var in _ENV_HEADERS:
            if os.environ.get(var, "").strip():
                raise ValueError(f"{var} is not supported because process-global OTLP "
                                 "headers can leak across endpoints; use the endpoint headers "
                                 "or header_env configuration")
        out = dict(self._headers)
        for name, var in self._header_env.items():
            value = os.environ.get(var)
            if value is None:
                raise ValueError(f'invalid OTLP header "{name}": environment variable '
                                 f'"{var}" is not set')
            out[name] = value
        seen = set()
        for name in list(self._headers) + list(self._header_env):
            low = name.lower()
            if low in seen:
                raise ValueError(f'invalid OTLP header "{name}": header names must be unique '
                                 "ignoring ASCII case")
            seen.add(low)
        return validate_headers(out)

    def to_dict(self) -> dict:
        """The configuration as a dict (header values left out)."""
        out = {"type": self._type, "endpoint": self.endpoint}
        for key in self._OPTIONS:
            if key == "headers":
                out[key] = sorted(self._headers)
            else:
                out[key] = getattr(self, key)
        return out

    def __repr__(self):
        return (f"{type(self).__name__}(type={self._type!r}, endpoint={self.endpoint!r}, "
                f"transport={self._transport!r})")


class OpenInferenceConfig(OpenTelemetryConfig):
    """NeMo Flow 0.2's configuration of an ``OpenInferenceSubscriber`` (the
    ``openinference`` projection)."""

    _default_type = "openinference"

    def __init__(self, endpoint=None, **options):
        super().__init__(endpoint=endpoint, **options)

    @property
    def type(self) -> str:
        """Always ``"openinference"``."""
        return "openinference"

    @type.setter
    def type(self, value) -> None:
        if value != "openinference":
            raise ValueError("OpenInferenceConfig type must be 'openinference'")


class OpenTelemetryRuntimeDiagnostic:
    """One runtime diagnostic: a code, its first message and how often it happened."""

    __slots__ = ("code", "message", "count")

    def __init__(self, code: str, message: str, count: int):
        self.code = code
        self.message = message
        self.count = count

    def __repr__(self):
        return f"OpenTelemetryRuntimeDiagnostic({self.code!r}, count={self.count})"


class OpenTelemetryRuntimeDiagnostics:
    """A snapshot of a subscriber's runtime diagnostics."""

    def __init__(self, entries: list):
        self.entries = entries

    def get(self, code: str):
        """The diagnostic with this code, or None."""
        return next((e for e in self.entries if e.code == code), None)

    def __len__(self):
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def __repr__(self):
        return f"OpenTelemetryRuntimeDiagnostics({self.entries!r})"


class OpenTelemetrySubscriber(OtlpExporter):
    """Exports nemoflow's events as OpenTelemetry spans (``full``, ``gen_ai`` or
    ``openinference``) to a collector, or as OTLP/JSON lines to a file."""

    default_name = "opentelemetry"
    _config_class: type[OpenTelemetryConfig] = OpenTelemetryConfig

    def __init__(self, config: OpenTelemetryConfig | None = None):
        if config is None:
            config = self._config_class()
        if not isinstance(config, OpenTelemetryConfig):
            raise TypeError(f"config must be an OpenTelemetryConfig, not "
                            f"{type(config).__name__}")
        config.validate()
        self._diagnostics = ProjectionDiagnostics(self)
        projection = projection_for(config, self._diagnostics.report)
        transport: HttpBinaryTransport | OtlpJsonFileTransport
        if config.transport == "http_binary":
            transport = HttpBinaryTransport(config.endpoint, headers=config.resolved_headers(),
                                            compression=config.compression)
        else:
            transport = OtlpJsonFileTransport(config.output_directory, config.filename,
                                              config.mode)
        resource = Resource.for_service(config.service_name,
                                        service_namespace=config.service_namespace,
                                        service_version=config.service_version,
                                        resource_attributes=config.resource_attributes)
        super().__init__(transport, projection, resource=resource,
                         scope=InstrumentationScope(config.instrumentation_scope),
                         max_queue_size=config.max_queue_size,
                         max_export_batch_size=config.max_export_batch_size,
                         scheduled_delay_millis=config.scheduled_delay_millis,
                         timeout_millis=config.timeout_millis, overflow=config.overflow)
        self.config = config

    @classmethod
    def from_tracer_provider(cls, provider, otel_type: str | None = None, **options):
        """A subscriber that hands nemoflow's spans to an OpenTelemetry SDK
        ``TracerProvider``'s span processors (with its resource) instead of a transport."""
        processor = getattr(provider, "_active_span_processor", None)
        if processor is None or not hasattr(provider, "resource"):
            raise TypeError("provider must be an opentelemetry.sdk.trace.TracerProvider")
        return OpenTelemetrySdkSubscriber(processor, cls._sdk_config(otel_type, options),
                                          resource=provider.resource)

    @classmethod
    def from_span_processor(cls, processor, otel_type: str | None = None, **options):
        """A subscriber that hands nemoflow's spans to an OpenTelemetry SDK ``SpanProcessor``
        (with the configured resource) instead of a transport."""
        return OpenTelemetrySdkSubscriber(processor, cls._sdk_config(otel_type, options))

    @classmethod
    def _sdk_config(cls, otel_type, options) -> OpenTelemetryConfig:
        unknown = sorted(set(options) - set(_SDK_OPTIONS))
        if unknown:
            raise TypeError(f"option(s) not used with an OpenTelemetry SDK pipeline: "
                            f"{', '.join(unknown)}")
        config = cls._config_class()
        if otel_type is not None:  # None: "full" (or "openinference" for OpenInferenceSubscriber)
            config.type = otel_type
        config.transport = "otlp_json_file"  # never used: the SDK's processors export
        for key, value in options.items():
            setattr(config, key, value)
        config.validate()
        return config

    def stats(self) -> dict:
        """The exporter's counters plus ``diagnostics`` (code → count)."""
        out = super().stats()
        out["diagnostics"] = self._diagnostics.counts()
        return out

    def runtime_diagnostics(self) -> OpenTelemetryRuntimeDiagnostics:
        """Export failures, dropped spans, invalid metric marks and refused metadata
        promotions, each with its count."""
        stats = super().stats()
        entries = []
        if stats["spans_failed"]:
            entries.append(OpenTelemetryRuntimeDiagnostic(
                "otel.traces_export_failed",
                f"OTLP trace export failed: {stats['last_error']}", stats["spans_failed"]))
        if stats["spans_dropped"]:
            entries.append(OpenTelemetryRuntimeDiagnostic(
                "otel.spans_dropped", "the span queue was full and spans were dropped",
                stats["spans_dropped"]))
        for code, message, n in self._diagnostics.entries():
            entries.append(OpenTelemetryRuntimeDiagnostic(code, message, n))
        entries.sort(key=lambda e: e.code)
        return OpenTelemetryRuntimeDiagnostics(entries)


class OpenInferenceSubscriber(OpenTelemetrySubscriber):
    """NeMo Flow 0.2's OpenInference subscriber: the ``openinference`` projection."""

    default_name = "openinference"
    _config_class = OpenInferenceConfig

    def __init__(self, config: OpenTelemetryConfig | None = None):
        if config is not None and config.type != "openinference":
            raise ValueError("OpenInferenceSubscriber needs an openinference configuration")
        super().__init__(config)
