"""Both backends run the same random push/pop/mark programs and must emit the same streams.

The compiled core and the pure-Python twin are compared event by event (``to_dict()`` with
timestamps dropped and uuids renamed to the order they were first seen), together with every
error raised along the way (type and message).
"""

from __future__ import annotations

import os

import pytest
from conftest import load_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

_NO_EXT = os.environ.get("NEMOFLOW_NO_EXTENSIONS", "") not in ("", "0")
_BACKENDS: dict = {}


def backends():
    """Both packages (cython, python), loaded once; skips when the compiled core is missing."""
    if not _BACKENDS:
        if _NO_EXT:
            pytest.skip("NEMOFLOW_NO_EXTENSIONS=1: compiled core deselected")
        try:
            import nemoflow._core  # noqa: F401
        except ImportError:
            if os.environ.get("CI"):
                pytest.fail("compiled core nemoflow._core is not built (CI requires it)")
            pytest.skip("compiled core nemoflow._core is not built")
        _BACKENDS["cython"] = load_backend("cython")
        _BACKENDS["python"] = load_backend("python")
    return _BACKENDS["cython"], _BACKENDS["python"]


# ---------------------------------------------------------------------------------------------
# Programs

NAMES = (st.sampled_from(["agent", "step", "search", "llm call", "naïve", "", "x\"y"])
         | st.text(max_size=4))
SCOPE_TYPES = st.integers(0, 10)
ATTRS = st.sampled_from([None, 1, 2, 3])
JSON_LEAF = (st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53)
             | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
KEYS = st.sampled_from(["", "a", "B", "b", "a1", "é", "_", "z z"])  # sorting corner cases
# Two levels of nesting, built by hand: st.recursive spends most of its time on retries.
_LEVEL1 = (JSON_LEAF | st.lists(JSON_LEAF, max_size=3)
           | st.dictionaries(KEYS, JSON_LEAF, max_size=3))
JSON = (JSON_LEAF | st.lists(_LEVEL1, max_size=3) | st.tuples(_LEVEL1, JSON_LEAF)
        | st.dictionaries(KEYS, _LEVEL1, max_size=3))
SMALL_JSON = st.none() | JSON
SCHEMA = st.none() | st.builds(lambda n, v: {"name": n, "version": v},
                               st.text(max_size=3), st.sampled_from(["1", "2.0"]))
INDEX = st.integers(0, 50)

PUSH = st.tuples(st.just("push"), NAMES, SCOPE_TYPES, SMALL_JSON, SMALL_JSON, ATTRS,
                 st.none() | INDEX)
POP = st.tuples(st.just("pop"), SMALL_JSON, SMALL_JSON)
POP_NON_TOP = st.tuples(st.just("pop_non_top"), INDEX)
POP_CLOSED = st.tuples(st.just("pop_closed"), INDEX)
MARK = st.tuples(st.just("mark"), NAMES, SMALL_JSON, SMALL_JSON, SCHEMA, st.none() | INDEX)
LOCAL = st.tuples(st.just("local"), st.sampled_from(["l1", "l2", "l3"]))
BAD = st.tuples(st.just("bad_payload"), st.sampled_from(["push", "mark", "pop"]))
# repeated entries weigh the draw towards programs that mostly succeed and nest deeper
SIMPLE_OP = st.one_of(PUSH, PUSH, PUSH, POP, POP, MARK, MARK, POP_NON_TOP, POP_CLOSED, LOCAL, BAD)


def _block(body):
    return st.tuples(st.just("block"), NAMES, SCOPE_TYPES, SMALL_JSON, SMALL_JSON,
                     st.lists(body, max_size=6), st.booleans())


_BLOCK1 = _block(SIMPLE_OP)
_BLOCK2 = _block(SIMPLE_OP | _BLOCK1)
OPS = st.one_of(SIMPLE_OP, _BLOCK1, _BLOCK2)
PROGRAMS = st.lists(OPS, max_size=25)


class Boom(Exception):
    """Raised inside scope blocks by the program."""


class Runner:
    """Runs one program on one backend, recording events and outcomes."""

    def __init__(self, nf):
        self.nf = nf
        self.stream = []  # (subscriber, event)
        self.outcomes = []  # per attempted call: "ok" or (error type, message)
        self.open = []  # handles on the stack, bottom to top
        self.closed = []
        self.n_local = 0

    def attempt(self, fn, *args, prefix_only=False, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except (RuntimeError, ValueError, TypeError) as exc:
            message = str(exc)
            if prefix_only:
                message = message.split(":", 1)[0]
            self.outcomes.append((type(exc).__name__, message))
            return None
        self.outcomes.append("ok")
        return result

    def pop_top(self, output=None, metadata=None):
        h = self.open[-1]
        self.attempt(self.nf.scope.pop, h, output=output, metadata=metadata)
        self.open.pop()
        self.closed.append(h)

    def run(self, ops, base):
        nf = self.nf
        for op in ops:
            kind = op[0]
            if kind == "push":
                _, name, st_i, inp, meta, attrs, parent_i = op
                parent = None
                if parent_i is not None and self.open:
                    parent = self.open[parent_i % len(self.open)]
                attributes = None if attrs is None else nf.ScopeAttributes(attrs)
                h = self.attempt(nf.scope.push, name, nf.ScopeType(st_i), handle=parent,
                                 attributes=attributes, input=inp, metadata=meta)
                self.open.append(h)
            elif kind == "pop":
                if len(self.open) > base:
                    self.pop_top(op[1], op[2])
                elif base == 0:
                    self.attempt(nf.scope.pop, nf.scope.get_handle())  # the implicit root
            elif kind == "pop_non_top":
                if len(self.open) >= 2:
                    self.attempt(nf.scope.pop, self.open[op[1] % (len(self.open) - 1)])
            elif kind == "pop_closed":
                if self.closed:
                    self.attempt(nf.scope.pop, self.closed[op[1] % len(self.closed)])
            elif kind == "mark":
                _, name, data, meta, schema, handle_i = op
                handle = None
                if handle_i is not None and self.open:
                    handle = self.open[handle_i % len(self.open)]
                self.attempt(nf.scope.event, name, handle=handle, data=data, metadata=meta,
                             data_schema=schema)
            elif kind == "local":
                if self.open:
                    name = op[1]
                    self.attempt(nf.scope_local.register_subscriber, self.open[-1], name,
                                 lambda e, name=name: self.stream.append((name, e)))
            elif kind == "bad_payload":
                where = op[1]
                bad = {"k": {1, 2}}
                if where == "push":
                    self.attempt(nf.scope.push, "bad", nf.ScopeType.Tool, input=bad,
                                 prefix_only=True)
                elif where == "mark":
                    self.attempt(nf.scope.event, "bad", data=bad, prefix_only=True)
                elif self.open and len(self.open) > base:
                    self.attempt(nf.scope.pop, self.open[-1], output=bad, prefix_only=True)
            elif kind == "block":
                _, name, st_i, inp, meta, body, raise_ = op
                try:
                    with nf.scope.scope(name, nf.ScopeType(st_i), input=inp,
                                        metadata=meta) as h:
                        self.open.append(h)
                        depth = len(self.open)
                        self.run(body, depth)
                        while len(self.open) > depth:
                            self.pop_top()
                        self.open.pop()
                        self.closed.append(h)
                        if raise_:
                            raise Boom(f"boom in {name}")
                except Boom as exc:
                    self.outcomes.append(("Boom", str(exc)))
                else:
                    self.outcomes.append("block ok")
            else:  # pragma: no cover
                raise AssertionError(op)


def normalized(stream):
    ids = {}

    def ordinal(u):
        if u is None:
            return None
        return ids.setdefault(u, len(ids))

    out = []
    for who, e in stream:
        d = e.to_dict()
        assert d["timestamp"] == e.timestamp
        del d["timestamp"]
        d["uuid"] = ordinal(d["uuid"])
        d["parent_uuid"] = ordinal(d["parent_uuid"])
        # the exact line too: both backends must write byte-identical JSONL
        line = e.to_json().replace(f'"timestamp":"{e.timestamp}"', '"timestamp":"T"')
        for u in (e.uuid, e.parent_uuid):
            if u is not None:
                line = line.replace(u, f"uuid-{ordinal(u)}")
        out.append((who, d, line))
    return out


def run_program(nf, program):
    nf.subscribers._clear()
    nf._core._forget_registrations()
    token = nf._core.bind(nf._core.new_root())
    runner = Runner(nf)
    try:
        nf.subscribers.register("global", lambda e: runner.stream.append(("global", e)))
        runner.run(program, 0)
        while runner.open:
            runner.pop_top()
        assert nf.scope.get_handle().parent_uuid is None  # back at the root
    finally:
        nf._core.unbind(token)
        nf.subscribers._clear()
        nf._core._forget_registrations()
    return normalized(runner.stream), runner.outcomes


@pytest.fixture(scope="module")
def both_backends():
    return backends()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=PROGRAMS)
def test_backends_emit_identical_streams(both_backends, program):
    cython, python = both_backends
    got_c = run_program(cython, program)
    got_py = run_program(python, program)
    assert got_c[1] == got_py[1]  # outcomes (errors) first: they explain stream differences
    assert got_c[0] == got_py[0]


def test_programs_exercise_errors_and_events():
    """The program runner itself works (on whatever backend is importable), so the
    comparison above cannot pass by comparing two empty streams."""
    nf = load_backend("python")
    program = [
        ("push", "a", 0, {"q": 1}, None, 3, None),
        ("local", "l1"),
        ("local", "l1"),
        ("mark", "m", [1, (2, 3)], None, {"name": "s", "version": "1"}, None),
        ("pop_non_top", 0),
        ("push", "b", 2, None, {"m": 1}, None, 0),
        ("pop_non_top", 0),
        ("local", "l1"),
        ("bad_payload", "push"),
        ("block", "blk", 1, None, None, [("push", "c", 3, None, None, None, None)], True),
        ("pop", {"out": 1}, {"m": 2}),
        ("pop", None, None),
        ("pop", None, None),
        ("pop_closed", 0),
    ]
    stream, outcomes = run_program(nf, program)
    assert ("InvalidArgumentError",
            "invalid argument: scope handle is not at the top of the stack") in outcomes
    assert ("InvalidArgumentError", "invalid argument: root scope cannot be removed") in outcomes
    assert ("NotFoundError", "not found: scope handle not found") in outcomes
    assert ("AlreadyExistsError", "already exists: l1 subscriber already exists") in outcomes
    assert ("ValueError", "Failed to convert to JSON") in outcomes
    assert ("Boom", "boom in blk") in outcomes
    assert [who for who, _, _ in stream].count("l1") > 0
    globals_ = [d for who, d, _ in stream if who == "global"]
    assert stream[0][2].startswith('{"atof_version":"0.1","attributes":["parallel","relocatable"]')
    assert '"parent_uuid":"uuid-1"' in stream[0][2] and '"timestamp":"T"' in stream[0][2]
    assert [(d["name"], d.get("scope_category")) for d in globals_] == [
        ("a", "start"), ("m", None), ("b", "start"), ("blk", "start"), ("c", "start"),
        ("c", "end"), ("blk", "end"), ("b", "end"), ("a", "end")]
    assert globals_[0]["uuid"] == 0 and globals_[0]["parent_uuid"] == 1
    assert globals_[2]["parent_uuid"] == 0  # explicit parent a
    assert globals_[1]["data"] == [1, [2, 3]]
    assert globals_[6]["metadata"] == {"otel.status_code": "ERROR",
                                       "otel.status_description": "boom in blk"}
