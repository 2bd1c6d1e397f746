"""OTLP/JSON: one ``ExportTraceServiceRequest`` as compact UTF-8 text.

The bytes are reproducible: keys in proto field-number order, default-valued fields left out
(except ``status``, always written, ``{}`` when UNSET), ids as lowercase hex (the OTLP/JSON
exception to the proto3 mapping, which would use base64), enums as integers, 64-bit integers
as decimal strings, non-ASCII text written as it is.
"""

from __future__ import annotations

import math

import orjson

from ._model import InstrumentationScope, Resource

__all__ = ["JsonEncoder", "encode_json"]


def _double(value: float):
    if math.isfinite(value):
        return value
    # orjson writes non-finite floats as null; proto3 JSON spells them as strings.
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _any(value) -> dict:
    # bool before int: bool is a subclass of int.
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(int(value))}
    if isinstance(value, float):
        return {"doubleValue": _double(value)}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any(v) for v in value]}} if value else {
            "arrayValue": {}}
    raise TypeError(f"cannot encode an attribute value of type {type(value).__name__}")


def _attributes(pairs) -> list:
    out = []
    for key, value in pairs:
        out.append({"key": key, "value": _any(value)} if key else {"value": _any(value)})
    return out


def _span(span) -> dict:
    d: dict = {"traceId": span.trace_id.hex(), "spanId": span.span_id.hex()}
    if span.trace_state:
        d["traceState"] = span.trace_state
    if span.parent_span_id is not None:
        d["parentSpanId"] = span.parent_span_id.hex()
    if span.name:
        d["name"] = span.name
    if span.kind:
        d["kind"] = span.kind
    if span.start_ns:
        d["startTimeUnixNano"] = str(span.start_ns)
    if span.end_ns:
        d["endTimeUnixNano"] = str(span.end_ns)
    if span.attributes:
        d["attributes"] = _attributes(span.attributes)
    if span.events:
        events = []
        for ev in span.events:
            e: dict = {}
            if ev.time_ns:
                e["timeUnixNano"] = str(ev.time_ns)
            if ev.name:
                e["name"] = ev.name
            if ev.attributes:
                e["attributes"] = _attributes(ev.attributes)
            events.append(e)
        d["events"] = events
    status: dict = {}
    if span.status_message:
        status["message"] = span.status_message
    if span.status_code:
        status["code"] = span.status_code
    d["status"] = status
    if span.flags:
        d["flags"] = span.flags
    return d


class JsonEncoder:
    """Encodes batches of spans under one resource and scope (both encoded once)."""

    content_type = "application/json"

    def __init__(self, resource: Resource, scope: InstrumentationScope):
        res: dict = {}
        if resource.attributes:
            res["attributes"] = _attributes(resource.attributes)
        sc: dict = {}
        if scope.name:
            sc["name"] = scope.name
        if scope.version:
            sc["version"] = scope.version
        self._resource = res
        self._scope = sc

    def encode(self, spans) -> bytes:
        """The request for ``spans`` as one compact JSON text (no trailing newline)."""
        request = {"resourceSpans": [{"resource": self._resource, "scopeSpans": [
            {"scope": self._scope, "spans": [_span(s) for s in spans]}]}]}
        return orjson.dumps(request)


def encode_json(resource: Resource, scope: InstrumentationScope, spans) -> bytes:
    """One ``ExportTraceServiceRequest`` holding ``spans``, as OTLP/JSON bytes."""
    return JsonEncoder(resource, scope).encode(spans)
