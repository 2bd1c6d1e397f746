"""``nf.trace.tool("name")`` and ``nf.trace.llm("name")`` are decorators and ``with`` blocks,
as every other scope type is; a block writes the events the decorated call writes."""

from __future__ import annotations

import pytest


def _fields(ev):
    d = ev.to_dict()
    for key in ("uuid", "parent_uuid", "timestamp"):
        d.pop(key)
    return d


def test_tool_block_writes_what_the_decorated_tool_writes(nf, events):
    @nf.trace.tool("search")
    def search(query):
        return ["a", "b"]

    search(query="q")
    root = nf._core.current()
    with nf.trace.tool("search", input={"query": "q"}) as call:
        assert nf._core.current() is call.handle  # what runs inside nests under the call
        nf.mark("inside")
        call.output = ["a", "b"]
    assert nf._core.current() is root
    decorated, block = events[:2], [events[2], events[4]]
    assert [_fields(e) for e in block] == [_fields(e) for e in decorated]
    assert events[3].name == "inside" and events[3].parent_uuid == events[2].uuid
    assert block[0].category == "tool" and block[1].metadata == {"otel.status_code": "OK"}


def test_llm_block_writes_what_the_decorated_llm_call_writes(nf, events):
    response = {"model": "gpt-test", "usage": {"prompt_tokens": 3, "completion_tokens": 1}}

    @nf.trace.llm("chat", model="gpt-test")
    def chat():
        return response

    chat()
    with nf.trace.llm("chat", model="gpt-test", input={"headers": {}, "content": {}}) as call:
        call.set_output(response)
    assert [_fields(e) for e in events[2:]] == [_fields(e) for e in events[:2]]
    assert events[2].category == "llm"
    assert events[2].category_profile == {"model_name": "gpt-test"}
    assert events[3].data == response


def test_block_errors_are_recorded_and_raised(nf, events):
    @nf.trace.tool("fetch")
    def fetch():
        raise KeyError("gone")

    with pytest.raises(KeyError):
        fetch()
    with pytest.raises(KeyError):
        with nf.trace.tool("fetch") as call:
            call.output = "partial"
            raise KeyError("gone")
    assert _fields(events[3]) == _fields(events[1])
    assert events[3].metadata["otel.status_code"] == "ERROR"
    assert events[3].data is None
    with pytest.raises(ValueError, match="bad"):
        with nf.trace.llm("chat"):
            raise ValueError("bad")
    assert events[5].metadata["otel.status_code"] == "ERROR"


def test_one_spec_is_a_decorator_and_a_block(nf, events):
    spec = nf.trace.tool("lookup", metadata={"team": "x"})

    @spec
    def lookup(key):
        return key * 2

    assert lookup(key="ab") == "abab"
    with spec:
        with pytest.raises(RuntimeError, match="already in use"):
            with spec:
                pass
    with spec:
        pass
    assert [(e.name, e.scope_category) for e in events] == [("lookup", "start"),
                                                           ("lookup", "end")] * 3
    assert all(e.category == "tool" for e in events)
    assert repr(spec) == "<nf.trace.tool 'lookup'>"


def test_decorated_calls_still_go_through_guardrails(nf, events):
    from nemoflow import guardrails

    def refuse(name, args):
        return {"refused": True}

    guardrails.register_tool_sanitize_request("refuse", 10, refuse)

    @nf.trace.tool("search")
    def search(query):
        return query

    search(query="secret")
    assert events[0].data == {"refused": True}


def test_misuse_raises_type_error(nf, events):
    with pytest.raises(TypeError, match="needs a name"):
        with nf.trace.tool():
            pass
    with pytest.raises(TypeError, match="input= is for `with` blocks"):
        @nf.trace.tool("t", input={"a": 1})
        def t():
            pass
    with pytest.raises(TypeError, match="input= is for `with` blocks"):
        nf.trace.llm(lambda: None, input={"a": 1})
    with pytest.raises(TypeError, match="name must be str"):
        nf.trace.llm(name=3)
    assert events == []
