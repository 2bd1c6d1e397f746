"""``scope.metric``: a validated group of metric measurements, written as one mark.

The mark's ``data`` is ``{"measurements": [...]}`` and its ``data_schema`` names the
measurement format, as the reference writes them, so a reader that exports metrics from ATOF
finds them there.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any

from ._backend import core as _core

__all__ = ["METRIC_SCHEMA", "MetricKind", "MetricMeasurement", "MetricValueType", "metric"]

#: The ``data_schema`` of a metric mark.
METRIC_SCHEMA = {"name": "nemo.relay.metric_measurements", "version": "1"}


class MetricKind(enum.Enum):
    """The OpenTelemetry instrument a measurement is recorded by."""

    Counter = "counter"
    UpDownCounter = "up_down_counter"
    Gauge = "gauge"
    Histogram = "histogram"

    def __repr__(self):
        return f"MetricKind.{self.name}"


class MetricValueType(enum.Enum):
    """The numeric representation of a measurement's value."""

    U64 = "u64"
    I64 = "i64"
    F64 = "f64"

    def __repr__(self):
        return f"MetricValueType.{self.name}"


_SUPPORTED = {
    MetricKind.Counter: (MetricValueType.U64, MetricValueType.F64),
    MetricKind.UpDownCounter: (MetricValueType.I64, MetricValueType.F64),
    MetricKind.Gauge: (MetricValueType.U64, MetricValueType.I64, MetricValueType.F64),
    MetricKind.Histogram: (MetricValueType.U64, MetricValueType.F64),
}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,254}", re.ASCII)
_I64_MAX = (1 << 63) - 1


def _not_instance(value, cls) -> TypeError:
    return TypeError(f"'{type(value).__name__}' object is not an instance of '{cls.__name__}'")


class MetricMeasurement:
    """One recording operation of ``scope.metric``: a value for one named instrument."""

    __slots__ = ("_name", "_kind", "_value_type", "_value", "_unit", "_description",
                 "_attributes", "_boundaries")

    def __init__(self, name: str, kind: MetricKind, value_type: MetricValueType,
                 value: int | float, unit: str | None = None, description: str | None = None,
                 attributes: dict | None = None, boundaries: list | None = None) -> None:
        if not isinstance(name, str):
            raise _not_instance(name, str)
        if not isinstance(kind, MetricKind):
            raise _not_instance(kind, MetricKind)
        if not isinstance(value_type, MetricValueType):
            raise _not_instance(value_type, MetricValueType)
        for text in (unit, description):
            if text is not None and not isinstance(text, str):
                raise _not_instance(text, str)
        if attributes is not None and not isinstance(attributes, dict):
            raise _not_instance(attributes, dict)
        self._name, self._kind, self._value_type, self._value = name, kind, value_type, value
        self._unit, self._description = unit, description
        self._attributes = None if attributes is None else dict(attributes)
        self._boundaries = None if boundaries is None else list(boundaries)

    name = property(lambda self: self._name)
    kind = property(lambda self: self._kind)
    value_type = property(lambda self: self._value_type)
    value = property(lambda self: self._value)
    unit = property(lambda self: self._unit)
    description = property(lambda self: self._description)
    attributes = property(lambda self: None if self._attributes is None
                          else dict(self._attributes))
    boundaries = property(lambda self: None if self._boundaries is None
                          else list(self._boundaries))

    def __repr__(self):
        return (f'<MetricMeasurement name="{self._name}" kind={self._kind.value} '
                f'value_type={self._value_type.value}>')

    def _problem(self) -> str | None:
        """What makes this measurement invalid, or None."""
        if not _NAME.fullmatch(self._name):
            return ("name must be 1-255 ASCII bytes, start with a letter, and contain only "
                    "letters, digits, '_', '.', '-', or '/'")
        kind, vt, value = self._kind, self._value_type, self._value
        if vt not in _SUPPORTED[kind]:
            return f"kind {kind.value} does not support value_type {vt.value}"
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if vt is MetricValueType.U64:
            if not is_int or not 0 <= value <= _I64_MAX:
                return "value must be an unsigned integer no greater than i64::MAX"
        elif vt is MetricValueType.I64:
            if not is_int or not -_I64_MAX - 1 <= value <= _I64_MAX:
                return "value must be a signed integer"
        else:
            if not (is_int or isinstance(value, float)) or not math.isfinite(value):
                return "value must be a number"
            if kind is MetricKind.Counter and value < 0:
                return "counter values must be non-negative"
        if self._boundaries is not None:
            if kind is not MetricKind.Histogram:
                return "boundaries are only valid for histogram measurements"
            for b in self._boundaries:
                if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
                    return "must be finite"
            if any(a >= b for a, b in zip(self._boundaries, self._boundaries[1:])):
                return "boundaries must be strictly increasing without duplicates"
        for key, v in (self._attributes or {}).items():
            if not isinstance(key, str):
                return "attribute keys must be strings"
            problem = _attribute_problem(v)
            if problem is not None:
                return problem
        return None

    def _wire(self) -> dict:
        value = float(self._value) if self._value_type is MetricValueType.F64 else self._value
        return {
            "attributes": self._attributes,
            "boundaries": None if self._boundaries is None
            else [float(b) for b in self._boundaries],
            "description": self._description,
            "kind": self._kind.value,
            "name": self._name,
            "unit": self._unit,
            "value": value,
            "value_type": self._value_type.value,
        }


_PRIMITIVES = (bool, int, float, str)


def _attribute_problem(value: Any) -> str | None:
    if value is None:
        return "attribute values must not be null"
    if isinstance(value, _PRIMITIVES):
        return None
    if isinstance(value, list):
        if not value:
            return "attribute arrays must not be empty and untyped"
        kinds = {type(v) for v in value}
        if not kinds <= set(_PRIMITIVES):
            return "attribute values must be primitive values or homogeneous primitive arrays"
        if len(kinds) != 1:
            return "attribute arrays must contain one primitive type"
        return None
    return "attribute values must be primitive values or homogeneous primitive arrays"


def metric(name, measurements, *, handle=None, metadata=None, timestamp=None) -> None:
    """Emit a validated group of metric measurements as one mark (``ValueError``, and nothing
    emitted, if any measurement is invalid)."""
    items = list(measurements)
    if not items:
        raise ValueError("invalid argument: measurements must contain at least one entry")
    descriptors: dict[str, tuple] = {}
    for i, m in enumerate(items):
        if not isinstance(m, MetricMeasurement):
            raise _not_instance(m, MetricMeasurement)
        problem = m._problem()
        if problem is not None:
            raise ValueError(f"invalid argument: measurements[{i}] {problem}")
        descriptor = (m._kind, m._value_type, m._unit)
        first = descriptors.setdefault(m._name, (i, descriptor))
        if first[1] != descriptor:
            raise ValueError(f"invalid argument: measurements[{i}] conflicts with the "
                             f"descriptor for measurements[{first[0]}]")
    _core.event(name, handle=handle, data={"measurements": [m._wire() for m in items]},
                metadata=metadata, data_schema=METRIC_SCHEMA, timestamp=timestamp)
