"""Random arguments, on both cores: every operation either raises a typed error and emits
nothing (no event to a synchronous subscriber, no line in the JSONL file), or emits events whose
``to_json()`` is valid JSON and equal, byte for byte, to the line the exporter writes."""

from __future__ import annotations

import datetime as dt
import enum
import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


class Color(enum.Enum):
    RED = "red"
    NAN = math.nan
    INF = (1, math.inf)
    FRAGMENT = orjson.Fragment(b"[1,")
    NESTED = {"k": [1.5]}  # noqa: RUF012 - an Enum member, not a class attribute


class Level(enum.IntEnum):
    LOW = 1


class Label(str):
    pass


class Kind(enum.StrEnum):
    A = "kind-a"


FRAGMENTS = st.sampled_from([orjson.Fragment(b"1"), orjson.Fragment(b'{"b":1,"a":2}'),
                             orjson.Fragment(b"1\n2"), orjson.Fragment(b"{"),
                             orjson.Fragment("\u2028")])
TEXT = (st.text(max_size=4)
        | st.text(st.characters(categories=["Cs", "Ll", "Zl", "Cc"]), max_size=3)
        | st.sampled_from(["", "naïve", "a\nb", "\u2028", "x\"y\\", "\udcff"]))
LEAF = (st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
        | st.floats() | TEXT | st.sampled_from([*list(Color), Level.LOW, Kind.A, Label("label")])
        | FRAGMENTS | st.binary(max_size=3)
        | st.just(dt.datetime(2024, 1, 1)))
KEYS = TEXT | st.integers(-3, 3) | st.none() | st.floats(allow_nan=False)
_LEVEL1 = (LEAF | st.lists(LEAF, max_size=3) | st.tuples(LEAF, LEAF)
           | st.dictionaries(KEYS, LEAF, max_size=3))
PAYLOAD = (st.none() | LEAF | st.lists(_LEVEL1, max_size=3)
           | st.dictionaries(TEXT, _LEVEL1, max_size=3))
NAMES = (st.sampled_from(["scope", "", "naïve", "a\nb", "\udcff"]) | st.just(Kind.A)
         | TEXT | TEXT.map(Label) | st.integers(0, 3) | st.none() | st.binary(max_size=2))
CATEGORY = st.none() | NAMES
UTC = dt.timezone.utc
ZONES = st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=-11)),
                         dt.timezone(dt.timedelta(hours=14))])
TIMESTAMPS = (st.none()
              | st.datetimes(timezones=ZONES)  # years 1 to 9999: most are out of range
              | st.datetimes(min_value=dt.datetime(1677, 9, 22),
                             max_value=dt.datetime(2262, 4, 10), timezones=ZONES)
              | st.datetimes(max_value=dt.datetime(2100, 1, 1))  # naive
              | st.integers(0, 2 ** 64) | st.just("2024-01-01T00:00:00+00:00"))
ATTRIBUTES = (st.none() | st.integers(-2, 2 ** 40) | st.sampled_from([1, 2, 3, 1 << 31])
              | st.booleans() | st.just("parallel"))
STRICT_ERRORS = (TypeError, ValueError)


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


class Harness:
    """A JSONL exporter and a synchronous recorder; ``check`` runs one operation."""

    def __init__(self, nf, tmp_path):
        self.nf = nf
        config = nf.AtofExporterConfig(output_directory=str(tmp_path), filename="p.jsonl",
                                       mode=nf.AtofExporterMode.Overwrite)
        self.exporter = nf.AtofExporter(config)
        self.exporter.register("property-jsonl")
        self.events = []
        nf.subscribers.register("property-recorder", self.events.append)
        self.offset = 0

    def close(self):
        self.exporter.shutdown()

    def _new_lines(self):
        self.exporter.force_flush()
        with open(self.exporter.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        assert data == b"" or data.endswith(b"\n")
        return [line.decode("utf-8") for line in data.split(b"\n")[:-1]]

    def check(self, operation, errors=STRICT_ERRORS):
        """Run ``operation``; returns (True, its result) or (False, None) when it raised."""
        before = len(self.events)
        try:
            result = operation()
        except errors as exc:
            assert isinstance(exc, (TypeError, ValueError, self.nf.NemoFlowError)), exc
            assert self.events[before:] == [], "an event was emitted before the error"
            assert self._new_lines() == [], "a line was written before the error"
            return False, None
        emitted = self.events[before:]
        lines = self._new_lines()
        assert len(lines) == len(emitted) >= 1
        for ev, line in zip(emitted, lines):
            text = ev.to_json()
            assert text == line
            json.loads(text, parse_constant=_no_constants)
        return True, result


@pytest.fixture
def harness(nf, tmp_path):
    h = Harness(nf, tmp_path)
    yield h
    h.close()


@SETTINGS
@given(name=NAMES, data=PAYLOAD, metadata=PAYLOAD, input=PAYLOAD, timestamp=TIMESTAMPS,
       attributes=ATTRIBUTES, output=PAYLOAD, end_metadata=PAYLOAD, end_timestamp=TIMESTAMPS)
def test_push_and_pop(harness, name, data, metadata, input, timestamp, attributes, output,
                      end_metadata, end_timestamp):
    nf = harness.nf
    root = nf.scope.get_handle()
    ok, h = harness.check(lambda: nf.scope.push(
        name, nf.ScopeType.Function, data=data, metadata=metadata, input=input,
        timestamp=timestamp, attributes=attributes))
    if not ok:
        assert nf.scope.get_handle() is root
        return
    assert nf.scope.get_handle() is h
    ok, _ = harness.check(lambda: nf.scope.pop(h, output=output, metadata=end_metadata,
                                               timestamp=end_timestamp))
    if not ok:
        assert nf.scope.get_handle() is h
        harness.check(lambda: nf.scope.pop(h))
    assert nf.scope.get_handle() is root


@SETTINGS
@given(name=NAMES, data=PAYLOAD, metadata=PAYLOAD, category=CATEGORY, timestamp=TIMESTAMPS,
       profile=PAYLOAD)
def test_mark(harness, name, data, metadata, category, timestamp, profile):
    nf = harness.nf
    harness.check(lambda: nf.mark(name, data=data, metadata=metadata, category=category,
                                  timestamp=timestamp, category_profile=profile))


@SETTINGS
@given(name=NAMES, data=PAYLOAD, input=PAYLOAD, timestamp=TIMESTAMPS,
       end_timestamp=TIMESTAMPS, attributes=ATTRIBUTES, fail=st.booleans())
def test_scope_block(harness, name, data, input, timestamp, end_timestamp, attributes, fail):
    nf = harness.nf
    root = nf.scope.get_handle()

    def block():
        ctx = nf.scope.scope(name, nf.ScopeType.Agent, data=data, input=input,
                             timestamp=timestamp, end_timestamp=end_timestamp,
                             attributes=attributes)
        try:
            with ctx:
                if fail:
                    raise KeyError("inside")
        except KeyError:
            pass

    harness.check(block)
    assert nf.scope.get_handle() is root


@SETTINGS
@given(name=NAMES, args=PAYLOAD, result=PAYLOAD, metadata=PAYLOAD, timestamp=TIMESTAMPS,
       attributes=ATTRIBUTES, tool_call_id=st.none() | TEXT, end_timestamp=TIMESTAMPS)
def test_tool_call(harness, name, args, result, metadata, timestamp, attributes, tool_call_id,
                   end_timestamp):
    nf = harness.nf
    ok, h = harness.check(lambda: nf.tools.call(name, args, metadata=metadata,
                                                timestamp=timestamp, attributes=attributes,
                                                tool_call_id=tool_call_id))
    if ok:
        ok, _ = harness.check(lambda: nf.tools.call_end(h, result, timestamp=end_timestamp))
        if not ok:
            harness.check(lambda: nf.tools.call_end(h, None))


@SETTINGS
@given(name=NAMES, content=st.dictionaries(TEXT, PAYLOAD, max_size=3),
       headers=st.dictionaries(TEXT, TEXT, max_size=2), response=PAYLOAD,
       model=st.none() | TEXT, attributes=ATTRIBUTES, timestamp=TIMESTAMPS)
def test_llm_call(harness, name, content, headers, response, model, attributes, timestamp):
    nf = harness.nf
    request = nf.llm.LLMRequest(headers, content)
    ok, h = harness.check(lambda: nf.llm.call(name, request, model_name=model,
                                              attributes=attributes, timestamp=timestamp))
    if ok:
        ok, _ = harness.check(lambda: nf.llm.call_end(h, response))
        if not ok:
            harness.check(lambda: nf.llm.call_end(h, None))


@SETTINGS
@given(args=PAYLOAD, result=PAYLOAD, kind=st.sampled_from(["trace", "tool", "llm"]))
def test_traced_code_payloads_never_raise(harness, args, result, kind):
    # What the traced program passes and returns is recorded leniently: never an error.
    nf = harness.nf
    decorator = {"trace": nf.trace, "tool": nf.trace.tool, "llm": nf.trace.llm}[kind]

    @decorator("traced")
    def traced(value):
        return result

    ok, value = harness.check(lambda: traced(args), ())
    assert ok and value is result


@SETTINGS
@given(args=PAYLOAD, result=PAYLOAD)
def test_managed_strict_calls(harness, args, result):
    nf = harness.nf
    ok, value = harness.check(lambda: nf.tools.execute_sync("managed", args, lambda a: result))
    assert not ok or value is result
