"""OTLP export: a span model, OTLP protobuf (written directly, or built with opentelemetry-proto)
and OTLP/JSON encoders, the ``http_binary`` and ``otlp_json_file`` transports, ``OtlpExporter``,
which runs a projection of events to spans on the delivery thread and exports the spans from a
bounded queue on its own thread, the ``full``, ``gen_ai`` and ``openinference`` projections,
and the public ``OpenTelemetryConfig`` / ``OpenTelemetrySubscriber``."""

from .._base import Exporter, ExportError
from ._exporter import OtlpExporter
from ._json import JsonEncoder, encode_json
from ._model import (
    FLAGS_LOCAL,
    FLAGS_REMOTE,
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_INTERNAL,
    KIND_PRODUCER,
    KIND_SERVER,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_UNSET,
    InstrumentationScope,
    Resource,
    Span,
    SpanEvent,
    check_span,
)
from ._proto import ProtoEncoder, encode_proto, to_proto
from ._sdk import OpenTelemetrySdkSubscriber
from ._subscriber import (
    OpenInferenceConfig,
    OpenInferenceSubscriber,
    OpenTelemetryConfig,
    OpenTelemetryRuntimeDiagnostic,
    OpenTelemetryRuntimeDiagnostics,
    OpenTelemetrySubscriber,
)
from ._transport import (
    ExportFailure,
    HttpBinaryTransport,
    OtlpJsonFileTransport,
    resolve_endpoint,
    validate_headers,
)
from ._wire import WireEncoder
from .projections import FullProjection, GenAIProjection, OpenInferenceProjection

__all__ = [
    "FLAGS_LOCAL",
    "FLAGS_REMOTE",
    "KIND_CLIENT",
    "KIND_CONSUMER",
    "KIND_INTERNAL",
    "KIND_PRODUCER",
    "KIND_SERVER",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_UNSET",
    "ExportError",
    "ExportFailure",
    "Exporter",
    "FullProjection",
    "GenAIProjection",
    "HttpBinaryTransport",
    "InstrumentationScope",
    "JsonEncoder",
    "OpenInferenceConfig",
    "OpenInferenceProjection",
    "OpenInferenceSubscriber",
    "OpenTelemetryConfig",
    "OpenTelemetryRuntimeDiagnostic",
    "OpenTelemetryRuntimeDiagnostics",
    "OpenTelemetrySdkSubscriber",
    "OpenTelemetrySubscriber",
    "OtlpExporter",
    "OtlpJsonFileTransport",
    "ProtoEncoder",
    "Resource",
    "Span",
    "SpanEvent",
    "WireEncoder",
    "check_span",
    "encode_json",
    "encode_proto",
    "resolve_endpoint",
    "to_proto",
    "validate_headers",
]
