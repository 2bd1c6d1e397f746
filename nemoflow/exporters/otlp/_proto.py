"""OTLP protobuf: ``ExportTraceServiceRequest`` messages built with ``opentelemetry-proto``
(the ``nemoflow[otel]`` extra), imported on first use."""

from __future__ import annotations

from ._model import InstrumentationScope, Resource

__all__ = ["ProtoEncoder", "encode_proto", "load_proto", "to_proto"]

_pb = None


def load_proto():
    """The ``opentelemetry-proto`` modules, or ImportError naming the extra to install."""
    global _pb
    if _pb is None:
        try:
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
            from opentelemetry.proto.common.v1 import common_pb2
            from opentelemetry.proto.resource.v1 import resource_pb2
            from opentelemetry.proto.trace.v1 import trace_pb2
        except ImportError as exc:
            raise ImportError("OTLP protobuf export needs the opentelemetry-proto package: "
                              "pip install 'nemoflow[otel]'") from exc

        class _Modules:
            request = trace_service_pb2.ExportTraceServiceRequest
            common = common_pb2
            resource = resource_pb2
            trace = trace_pb2

        _pb = _Modules
    return _pb


def _set_value(av, value) -> None:
    # Fields are set in place on messages made by ``add()``: building them with keyword
    # arguments copies every submessage and costs several times more.
    kind = type(value)
    if kind is str:
        av.string_value = value
    elif kind is bool:
        av.bool_value = value
    elif kind is int:
        av.int_value = value
    elif kind is float:
        av.double_value = value
    elif isinstance(value, (list, tuple)):
        array = av.array_value
        array.SetInParent()  # an empty array is still an array
        add = array.values.add
        for item in value:
            _set_value(add(), item)
    elif isinstance(value, bool):
        av.bool_value = value
    elif isinstance(value, int):
        av.int_value = int(value)
    elif isinstance(value, str):
        av.string_value = str(value)
    elif isinstance(value, float):
        av.double_value = float(value)
    else:
        raise TypeError(f"cannot encode an attribute value of type {kind.__name__}")


def _set_attributes(repeated, pairs) -> None:
    add = repeated.add
    for key, value in pairs:
        kv = add()
        kv.key = key
        _set_value(kv.value, value)


class ProtoEncoder:
    """Builds and serializes requests for batches of spans under one resource and scope."""

    content_type = "application/x-protobuf"

    def __init__(self, resource: Resource, scope: InstrumentationScope):
        pb = self._pb = load_proto()
        self._resource = pb.resource.Resource()
        _set_attributes(self._resource.attributes, resource.attributes)
        self._scope = pb.common.InstrumentationScope(name=scope.name, version=scope.version)

    def message(self, spans):
        """The ``ExportTraceServiceRequest`` message for ``spans``."""
        request = self._pb.request()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.CopyFrom(self._resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.CopyFrom(self._scope)
        add = scope_spans.spans.add
        for s in spans:
            span = add()
            span.trace_id = s.trace_id
            span.span_id = s.span_id
            if s.trace_state:
                span.trace_state = s.trace_state
            if s.parent_span_id is not None:
                span.parent_span_id = s.parent_span_id
            span.flags = s.flags
            span.name = s.name
            span.kind = s.kind
            span.start_time_unix_nano = s.start_ns
            span.end_time_unix_nano = s.end_ns
            if s.attributes:
                _set_attributes(span.attributes, s.attributes)
            if s.events:
                add_event = span.events.add
                for e in s.events:
                    event = add_event()
                    event.time_unix_nano = e.time_ns
                    event.name = e.name
                    if e.attributes:
                        _set_attributes(event.attributes, e.attributes)
            status = span.status
            status.SetInParent()  # always present, as in OTLP/JSON's "status": {}
            if s.status_code:
                status.code = s.status_code
            if s.status_message:
                status.message = s.status_message
        return request

    def encode(self, spans) -> bytes:
        """The serialized request for ``spans``."""
        return self.message(spans).SerializeToString()


def to_proto(resource: Resource, scope: InstrumentationScope, spans):
    """One ``ExportTraceServiceRequest`` message holding ``spans``."""
    return ProtoEncoder(resource, scope).message(spans)


def encode_proto(resource: Resource, scope: InstrumentationScope, spans) -> bytes:
    """One ``ExportTraceServiceRequest`` holding ``spans``, serialized."""
    return ProtoEncoder(resource, scope).message(spans).SerializeToString()
