"""Replays recorded ATOF events (dicts, as NeMo Relay writes them) through a projection and
compares the spans with the ones the reference exported for the same events."""

from __future__ import annotations

import datetime as _dt


def timestamp_ns(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp with up to 9 fraction digits."""
    main, _, rest = text.partition(".")
    frac, offset = rest, "+00:00"
    for sign in ("+", "-", "Z"):
        if sign in rest:
            idx = rest.index(sign)
            frac, offset = rest[:idx], rest[idx:]
            break
    if offset == "Z":
        offset = "+00:00"
    base = _dt.datetime.fromisoformat(main + offset)
    seconds = int(base.timestamp())
    return seconds * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


class DictEvent:
    """An event object with the attributes a projection reads, built from an ATOF dict."""

    def __init__(self, d: dict, keep_root: bool = True):
        self.kind = d["kind"]
        self.uuid = d["uuid"]
        self.parent_uuid = d.get("parent_uuid")
        self.name = d["name"]
        self.timestamp_ns = timestamp_ns(d["timestamp"])
        self.data = d.get("data")
        self.metadata = d.get("metadata")
        self.category = d.get("category")
        self.category_profile = d.get("category_profile")
        self.data_schema = d.get("data_schema")
        self.scope_category = d.get("scope_category")
        self.attributes = d.get("attributes") or []
        if keep_root and d.get("propagation_root_uuid"):
            self.propagation_root_uuid = d["propagation_root_uuid"]


def span_dict(pb) -> dict:
    """A comparable form of a protobuf span (attribute order and types kept)."""
    from google.protobuf import json_format

    def attrs(items):
        return [(a.key, json_format.MessageToDict(a.value)) for a in items]

    return {"name": pb.name, "kind": pb.kind, "trace_id": pb.trace_id.hex(),
            "span_id": pb.span_id.hex(), "parent_span_id": pb.parent_span_id.hex(),
            "flags": pb.flags, "trace_state": pb.trace_state,
            "start": pb.start_time_unix_nano, "end": pb.end_time_unix_nano,
            "attributes": attrs(pb.attributes),
            "events": [(e.name, e.time_unix_nano, attrs(e.attributes)) for e in pb.events],
            "status": (pb.status.code, pb.status.message)}


def project(projection, events, otlp) -> list:
    """Run ``projection`` over ATOF dicts; the spans as protobuf messages."""
    spans = []
    for d in events:
        out = projection.on_event(DictEvent(d))
        if out:
            spans.extend(out)
    req = otlp.to_proto(otlp.Resource.for_service(), otlp.InstrumentationScope(), spans)
    return [s for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
