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


def _any_value(pb, value):
    av = pb.common.AnyValue
    if isinstance(value, str):
        return av(string_value=value)
    if isinstance(value, bool):
        return av(bool_value=value)
    if isinstance(value, int):
        return av(int_value=value)
    if isinstance(value, float):
        return av(double_value=value)
    if isinstance(value, (list, tuple)):
        return av(array_value=pb.common.ArrayValue(values=[_any_value(pb, v) for v in value]))
    raise TypeError(f"cannot encode an attribute value of type {type(value).__name__}")


def _attributes(pb, pairs) -> list:
    kv = pb.common.KeyValue
    return [kv(key=key, value=_any_value(pb, value)) for key, value in pairs]


class ProtoEncoder:
    """Builds and serializes requests for batches of spans under one resource and scope."""

    content_type = "application/x-protobuf"

    def __init__(self, resource: Resource, scope: InstrumentationScope):
        pb = self._pb = load_proto()
        self._resource = pb.resource.Resource(attributes=_attributes(pb, resource.attributes))
        self._scope = pb.common.InstrumentationScope(name=scope.name, version=scope.version)

    def message(self, spans):
        """The ``ExportTraceServiceRequest`` message for ``spans``."""
        pb = self._pb
        tr = pb.trace
        pspan, pevent, pstatus = tr.Span, tr.Span.Event, tr.Status
        out = []
        for s in spans:
            span = pspan(trace_id=s.trace_id, span_id=s.span_id, trace_state=s.trace_state,
                         parent_span_id=s.parent_span_id or b"", flags=s.flags, name=s.name,
                         kind=s.kind, start_time_unix_nano=s.start_ns,
                         end_time_unix_nano=s.end_ns,
                         attributes=_attributes(pb, s.attributes),
                         status=pstatus(code=s.status_code, message=s.status_message))
            if s.events:
                span.events.extend([pevent(time_unix_nano=e.time_ns, name=e.name,
                                           attributes=_attributes(pb, e.attributes))
                                    for e in s.events])
            out.append(span)
        scope_spans = tr.ScopeSpans(scope=self._scope, spans=out)
        return pb.request(resource_spans=[
            tr.ResourceSpans(resource=self._resource, scope_spans=[scope_spans])])

    def encode(self, spans) -> bytes:
        """The serialized request for ``spans``."""
        return self.message(spans).SerializeToString()


def to_proto(resource: Resource, scope: InstrumentationScope, spans):
    """One ``ExportTraceServiceRequest`` message holding ``spans``."""
    return ProtoEncoder(resource, scope).message(spans)


def encode_proto(resource: Resource, scope: InstrumentationScope, spans) -> bytes:
    """One ``ExportTraceServiceRequest`` holding ``spans``, serialized."""
    return ProtoEncoder(resource, scope).message(spans).SerializeToString()
