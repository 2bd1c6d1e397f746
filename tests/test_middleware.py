"""Guardrails and intercepts: ordering, failure handling, scope-local registrations."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

OK = {"otel.status_code": "OK"}


def shape(events):
    return [(e.name, e.scope_category if e.kind == "scope" else "mark") for e in events]


def run(coro):
    return asyncio.run(coro)


def execute(nf, name="t", args=None, func=lambda a: a, **kw):
    return run(nf.tools.execute(name, {"x": 1} if args is None else args, func, **kw))


# --------------------------------------------------------------------------------------------
# Registries.

def test_duplicate_names_and_deregistration(nf):
    nf.guardrails.register_tool_sanitize_request("g", 0, lambda n, a: a)
    with pytest.raises(nf.AlreadyExistsError, match="^already exists: g already exists$"):
        nf.guardrails.register_tool_sanitize_request("g", 5, lambda n, a: a)
    nf.guardrails.register_tool_sanitize_response("g", 0, lambda n, a: a)  # another family
    assert nf.guardrails.deregister_tool_sanitize_request("g") is True
    assert nf.guardrails.deregister_tool_sanitize_request("g") is False
    nf.intercepts.register_tool_request("i", 0, False, lambda n, a: a)
    with pytest.raises(nf.AlreadyExistsError, match="^already exists: i already exists$"):
        nf.intercepts.register_tool_request("i", 1, True, lambda n, a: a)
    assert nf.intercepts.deregister_tool_request("i") is True
    with pytest.raises(TypeError):
        nf.intercepts.register_tool_request("j", 0, "yes", lambda n, a: a)
    with pytest.raises(TypeError):
        nf.guardrails.register_tool_conditional_execution("k", 1.5, lambda n, a: None)


def test_request_intercepts_order_by_priority_then_name_and_rewrite_real_args(nf, events):
    order = []

    def intercept(tag):
        def fn(name, args):
            order.append(tag)
            return {**args, "trail": args.get("trail", "") + tag}
        return fn

    nf.intercepts.register_tool_request("b", 1, False, intercept("b"))
    nf.intercepts.register_tool_request("a", 1, False, intercept("a"))
    nf.intercepts.register_tool_request("z", 0, False, intercept("z"))
    seen = []
    execute(nf, func=lambda a: seen.append(a) or "r")
    assert order == ["z", "a", "b"]
    assert seen == [{"x": 1, "trail": "zab"}]
    assert events[0].data == {"x": 1, "trail": "zab"}


def test_break_chain_stops_request_intercepts(nf):
    order = []
    nf.intercepts.register_tool_request("first", 0, True, lambda n, a: order.append(1) or a)
    nf.intercepts.register_tool_request("second", 1, False, lambda n, a: order.append(2) or a)
    execute(nf)
    assert order == [1]


def test_async_callbacks_are_awaited(nf, events):
    async def rewrite(name, args):
        await asyncio.sleep(0)
        return {"y": 2}

    async def redact(name, args):
        return {"redacted": True}

    async def allow(name, args):
        return None

    nf.intercepts.register_tool_request("r", 0, False, rewrite)
    nf.guardrails.register_tool_sanitize_request("s", 0, redact)
    nf.guardrails.register_tool_conditional_execution("c", 0, allow)
    assert execute(nf, func=lambda a: a) == {"y": 2}
    assert shape(events) == [("c", "start"), ("c", "end"), ("t", "start"), ("t", "end")]
    assert events[2].data == {"redacted": True}


def test_execution_intercepts_nest_lowest_priority_outermost_and_next_can_repeat(nf, events):
    order = []

    async def outer(name, args, nxt):
        order.append("outer>")
        first = await nxt(args)
        second = await nxt({"x": 10})
        order.append("<outer")
        return first + second

    def inner(name, args, nxt):  # sync: returns the awaitable from next
        order.append(f"inner{args['x']}")
        return nxt(args)

    nf.intercepts.register_tool_execution("inner", 5, inner)
    nf.intercepts.register_tool_execution("outer", 1, outer)
    calls = []
    result = execute(nf, func=lambda a: calls.append(a["x"]) or a["x"])
    assert result == 11
    assert order == ["outer>", "inner1", "inner10", "<outer"]
    assert calls == [1, 10]
    assert shape(events) == [("t", "start"), ("t", "end")]
    assert events[1].data == 11


def test_sanitizers_change_only_the_event_copy(nf, events):
    def scrub(name, args):
        args["secret"] = "***"  # in place: must not reach the caller's value
        return args

    nf.guardrails.register_tool_sanitize_request("scrub", 0, scrub)
    nf.guardrails.register_tool_sanitize_response("hide", 0, lambda n, r: {"len": len(r)})
    args = {"secret": "pw", "q": 1}
    seen = []
    result = execute(nf, args=args, func=lambda a: seen.append(dict(a)) or [1, 2, 3])
    assert args == {"secret": "pw", "q": 1}
    assert seen == [{"secret": "pw", "q": 1}]
    assert result == [1, 2, 3]
    assert events[0].data == {"secret": "***", "q": 1}
    assert events[1].data == {"len": 3}


def test_sanitizers_fail_closed(nf, events):
    def broken(name, args):
        raise RuntimeError("oops")

    nf.guardrails.register_tool_sanitize_request("bad", 0, broken)
    nf.guardrails.register_tool_sanitize_response("nonjson", 0, lambda n, r: object())
    assert execute(nf, args={"secret": "pw"}, func=lambda a: "secret result") == "secret result"
    assert events[0].data is None and events[1].data is None
    assert events[1].metadata == OK


def test_failing_middleware_raises_internal_error(nf, events):
    def bad(name, args):
        raise KeyError("nope")

    nf.intercepts.register_tool_request("bad", 0, False, bad)
    with pytest.raises(nf.InternalError,
                       match=r"^internal error: Python tool callable failed for 't': "
                             r"KeyError: 'nope'$"):
        execute(nf)
    assert events == []  # nothing started
    nf.intercepts.deregister_tool_request("bad")
    nf.intercepts.register_tool_request("nonjson", 0, False, lambda n, a: {"o": object()})
    with pytest.raises(nf.InternalError,
                       match="^internal error: tool callback py_to_json failed for 't': "
                             "ValueError: Failed to conv"):
        execute(nf)


def test_failing_execution_intercept_is_internal_error_with_error_end(nf, events):
    def bad(name, args, nxt):
        raise ZeroDivisionError("div")

    nf.intercepts.register_tool_execution("bad", 0, bad)
    with pytest.raises(nf.InternalError, match="^internal error: ZeroDivisionError: div$") as e:
        execute(nf)
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    assert shape(events) == [("t", "start"), ("t", "end")]
    assert events[1].metadata["error.type"] == "InternalError"
    assert events[1].metadata["otel.status_code"] == "ERROR"


def test_func_error_passes_through_execution_intercepts_unchanged(nf, events):
    async def passthrough(name, args, nxt):
        return await nxt(args)

    nf.intercepts.register_tool_execution("p", 0, passthrough)

    def fail(a):
        raise LookupError("missing")

    with pytest.raises(LookupError, match="^missing$"):
        execute(nf, func=fail)
    assert events[1].metadata["exception.type"] == "LookupError"


def test_conditional_guardrail_rejection_event_sequence(nf, events):
    nf.guardrails.register_tool_conditional_execution("allow", 0, lambda n, a: None)
    nf.guardrails.register_tool_conditional_execution(
        "deny", 1, lambda n, a: "blocked" if n == "rm" else None)
    nf.guardrails.register_tool_conditional_execution("later", 2, lambda n, a: None)
    ran = []
    with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
        with pytest.raises(nf.GuardrailRejectedError, match="^guardrail rejected: blocked$"):
            execute(nf, name="rm", func=lambda a: ran.append(a))
    assert ran == []
    body = events[1:-1]
    assert shape(body) == [("allow", "start"), ("allow", "end"), ("deny", "start"),
                           ("deny", "end"), ("rm", "mark")]
    assert all(e.category == "guardrail" for e in body[:4])
    assert body[0].data == {"kind": "tool_conditional_execution", "target_name": "rm"}
    assert body[1].data == {"allowed": True, "rejected": False}
    assert body[3].data == {"allowed": False, "rejected": True, "rejection_reason": "blocked"}
    assert body[4].data == {"rejected": True, "rejection_reason": "blocked"}
    assert all(e.parent_uuid == agent.uuid for e in body)
    assert not any(e.category == "tool" for e in events)


def test_conditional_guardrail_wrong_type_or_raise_is_internal_error(nf, events):
    nf.guardrails.register_tool_conditional_execution("weird", 0, lambda n, a: 42)
    with pytest.raises(nf.InternalError, match=r"^internal error: tool conditional guardrail "
                       r"for 't' returned unexpected type \(expected str or None\): TypeError: "):
        execute(nf)
    assert shape(events) == [("weird", "start"), ("weird", "end")]
    assert events[1].metadata["otel.status_code"] == "ERROR"


def test_registries_are_snapshotted_per_call(nf, events):
    def late_register(name, args):
        nf.guardrails.register_tool_sanitize_request(
            "late", 0, lambda n, a: {"late": True})
        return args

    nf.intercepts.register_tool_request("reg", 0, False, late_register)
    execute(nf)
    assert events[0].data == {"x": 1}  # registered during the call: not seen by it
    nf.intercepts.deregister_tool_request("reg")
    execute(nf)
    assert events[2].data == {"late": True}


def test_conditional_execution_and_request_intercepts_helpers(nf, events):
    nf.intercepts.register_tool_request("r", 0, False, lambda n, a: {"n": n})
    assert nf.tools.request_intercepts("t", {}) == {"n": "t"}  # all sync: the value
    assert nf.tools.conditional_execution("t", {}) is None

    async def more(name, args):
        return {**args, "more": True}

    nf.intercepts.register_tool_request("s", 1, False, more)
    assert run(nf.tools.request_intercepts("t", {})) == {"n": "t", "more": True}
    nf.guardrails.register_tool_conditional_execution("g", 0, lambda n, a: "no")
    with pytest.raises(nf.GuardrailRejectedError, match="guardrail rejected: no"):
        nf.tools.conditional_execution("t", {})
    assert shape(events) == [("g", "start"), ("g", "end"), ("t", "mark")]

    async def deny(name, args):
        return "async no"

    nf.guardrails.deregister_tool_conditional_execution("g")
    nf.guardrails.register_tool_conditional_execution("h", 0, deny)
    with pytest.raises(nf.GuardrailRejectedError, match="guardrail rejected: async no"):
        run(nf.tools.conditional_execution("t", {}))


# --------------------------------------------------------------------------------------------
# Scope-local registrations.

def tagger(tag, log):
    def fn(name, args):
        log.append(tag)
        return args
    return fn


def test_scope_local_merge_order_globals_then_outer_then_inner(nf):
    log = []
    nf.intercepts.register_tool_request("g1", 1, False, tagger("g1", log))
    nf.intercepts.register_tool_request("g0", 0, False, tagger("g0", log))
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        nf.scope_local.register_tool_request(outer, "o1", 1, False, tagger("o1", log))
        nf.scope_local.register_tool_request(outer, "a-o0", 0, False, tagger("o0", log))
        with nf.scope.scope("inner", nf.ScopeType.Agent) as inner:
            # registered before the outer ones by name, priority 1: still after them
            nf.scope_local.register_tool_request(inner, "0-i1", 1, False, tagger("i1", log))
            nf.scope_local.register_tool_request(inner, "i-1", -1, False, tagger("i-1", log))
            execute(nf)
            assert log == ["i-1", "g0", "o0", "g1", "o1", "i1"]
            log.clear()
        execute(nf)  # inner popped: its registrations are gone
        assert log == ["g0", "o0", "g1", "o1"]
        log.clear()
    execute(nf)
    assert log == ["g0", "g1"]


def test_scope_local_visible_through_scopes_pushed_later(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        nf.scope_local.register_tool_sanitize_request(outer, "s", 0, lambda n, a: "hidden")
        with nf.scope.scope("a", nf.ScopeType.Function):
            with nf.scope.scope("b", nf.ScopeType.Function):
                execute(nf)
    starts = [e for e in events if e.name == "t" and e.scope_category == "start"]
    assert starts[0].data == "hidden"


def test_scope_local_on_closed_scope_raises_not_found(nf):
    h = nf.scope.push("s", nf.ScopeType.Agent)
    nf.scope.pop(h)
    with pytest.raises(nf.NotFoundError, match=f"^not found: scope {h.uuid} not found$"):
        nf.scope_local.register_tool_execution(h, "x", 0, lambda n, a, nxt: nxt(a))
    with pytest.raises(nf.NotFoundError, match=f"^not found: scope {h.uuid} not found$"):
        nf.scope_local.deregister_tool_execution(h, "x")


def test_scope_local_duplicate_and_deregister(nf, events):
    with nf.scope.scope("s", nf.ScopeType.Agent) as s:
        nf.scope_local.register_tool_sanitize_response(s, "x", 0, lambda n, r: "hidden")
        with pytest.raises(nf.AlreadyExistsError, match="^already exists: x already exists$"):
            nf.scope_local.register_tool_sanitize_response(s, "x", 0, lambda n, r: r)
        execute(nf)
        assert nf.scope_local.deregister_tool_sanitize_response(s, "x") is True
        assert nf.scope_local.deregister_tool_sanitize_response(s, "x") is False
        execute(nf)
    ends = [e.data for e in events if e.name == "t" and e.scope_category == "end"]
    assert ends == ["hidden", {"x": 1}]


def test_scope_local_does_not_leak_to_sibling_scopes_or_other_stacks(nf, events):
    log = []
    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        nf.scope_local.register_tool_request(a, "a", 0, False, tagger("a", log))
    with nf.scope.scope("b", nf.ScopeType.Agent):
        execute(nf)
    assert log == []
    h = nf.scope.push("c", nf.ScopeType.Agent)
    nf.scope_local.register_tool_request(h, "c", 0, False, tagger("c", log))
    other = []
    t = threading.Thread(target=lambda: other.append(execute(nf)))  # a fresh stack
    t.start()
    t.join()
    assert log == [] and other == [{"x": 1}]
    execute(nf)
    assert log == ["c"]
    nf.scope.pop(h)


def test_concurrent_tasks_with_scope_local_middleware_do_not_leak(nf, events):
    async def worker(i):
        with nf.scope.scope(f"w{i}", nf.ScopeType.Agent) as h:
            nf.scope_local.register_tool_request(
                h, "tag", 0, False, lambda n, a, i=i: {**a, "tag": i})
            results = []
            for _ in range(5):
                await asyncio.sleep(0)
                results.append(await nf.tools.execute(
                    "t", {"i": i}, lambda a: a))
            return results

    async def main():
        return await asyncio.gather(*(worker(i) for i in range(20)))

    for i, results in enumerate(run(main())):
        assert results == [{"i": i, "tag": i}] * 5


def test_concurrent_threads_with_scope_local_middleware_do_not_leak(nf, events):
    errors = []
    barrier = threading.Barrier(8)

    def worker(i):
        try:
            with nf.scope.scope(f"w{i}", nf.ScopeType.Agent) as h:
                nf.scope_local.register_tool_sanitize_request(
                    h, "s", 0, lambda n, a, i=i: {"seen": i})
                barrier.wait()
                for _ in range(20):
                    out = nf.tools.execute_sync("t", {"i": i}, lambda a: a["i"])
                    assert out == i
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    starts = [e for e in events if e.name == "t" and e.scope_category == "start"]
    ends = {e.uuid: e for e in events if e.name == "t" and e.scope_category == "end"}
    assert len(starts) == 160
    for e in starts:
        assert e.data == {"seen": ends[e.uuid].data}


FAMILIES = ["tool_sanitize_request", "tool_sanitize_response", "tool_conditional_execution",
            "llm_sanitize_request", "llm_sanitize_response", "llm_conditional_execution"]
INTERCEPTS = {"tool_request": True, "tool_execution": False, "llm_request": True,
              "llm_execution": False, "llm_stream_execution": False}


def test_every_family_has_global_and_scope_local_register_and_deregister(nf):
    with nf.scope.scope("s", nf.ScopeType.Agent) as s:
        for family in FAMILIES + list(INTERCEPTS):
            module = nf.guardrails if family in FAMILIES else nf.intercepts
            extra = (False,) if INTERCEPTS.get(family) else ()
            getattr(module, f"register_{family}")("n", 0, *extra, lambda *a: None)
            assert getattr(module, f"deregister_{family}")("n") is True
            getattr(nf.scope_local, f"register_{family}")(s, "n", 0, *extra, lambda *a: None)
            with pytest.raises(nf.AlreadyExistsError):
                getattr(nf.scope_local, f"register_{family}")(s, "n", 0, *extra,
                                                              lambda *a: None)
            assert getattr(nf.scope_local, f"deregister_{family}")(s, "n") is True
            assert getattr(nf.scope_local, f"deregister_{family}")(s, "n") is False


def test_execution_intercepts_global_wrap_scope_local_at_equal_priority(nf, events):
    order = []

    def wrap(tag):
        async def fn(name, req, nxt):
            order.append(tag + ">")
            out = await nxt(req)
            order.append("<" + tag)
            return out
        return fn

    nf.intercepts.register_llm_execution("global", 0, wrap("g"))
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        nf.scope_local.register_llm_execution(outer, "a-outer", 0, wrap("o"))
        with nf.scope.scope("inner", nf.ScopeType.Agent) as inner:
            nf.scope_local.register_llm_execution(inner, "0-inner", 0, wrap("i"))
            run(nf.llm.execute("chat", nf.LLMRequest({}, {}), lambda r: "ok"))
    assert order == ["g>", "o>", "i>", "<i", "<o", "<g"]


def test_scope_local_middleware_is_dropped_when_its_scope_is_popped(nf, events):
    h = nf.scope.push("s", nf.ScopeType.Agent)
    nf.scope_local.register_tool_sanitize_request(h, "s", 0, lambda n, a: "hidden")
    assert len(nf._middleware._locals) == 1
    nf.scope.pop(h)
    execute(nf)
    assert events[-2].data == {"x": 1}  # not sanitized: the scope's middleware is gone
    with pytest.raises(nf.NotFoundError):
        nf.scope_local.register_tool_sanitize_request(h, "again", 0, lambda n, a: a)
    other = nf.scope.push("other", nf.ScopeType.Agent)
    nf.scope_local.register_tool_sanitize_request(other, "o", 0, lambda n, a: a)
    assert list(nf._middleware._locals) == [other.uuid]  # the closed scope's entry is purged
    nf.scope.pop(other)


def test_registration_churn_during_concurrent_calls(nf, events):
    stop = threading.Event()
    errors = []

    def churn():
        i = 0
        while not stop.is_set():
            nf.guardrails.register_tool_sanitize_request(f"s{i}", i % 3, lambda n, a: a)
            nf.guardrails.deregister_tool_sanitize_request(f"s{i}")
            i += 1

    def caller(k):
        try:
            for j in range(200):
                assert nf.tools.execute_sync("t", {"k": k, "j": j}, lambda a: a["j"]) == j
        except Exception as exc:  # reported below
            errors.append(exc)

    churner = threading.Thread(target=churn)
    churner.start()
    callers = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    stop.set()
    churner.join()
    assert errors == []
    starts = [e for e in events if e.scope_category == "start"]
    assert len(starts) == 800
    assert all(e.data["j"] in range(200) for e in starts)


def test_scope_local_middleware_of_an_outer_scope_reaches_scopes_pushed_before_it(nf):
    import asyncio
    order = []

    def tag(label):
        def fn(tool_name, args):
            order.append(label)
            return args
        return fn

    async def run():
        outer = nf.scope.push("outer", nf.ScopeType.Agent)
        inner = nf.scope.push("inner", nf.ScopeType.Function)
        # inner registers first, outer second; both at the same priority
        nf.scope_local.register_tool_request(inner, "inner", 5, False, tag("inner"))
        nf.scope_local.register_tool_request(outer, "outer", 5, False, tag("outer"))
        await nf.tools.execute("t", {}, lambda args: args)
        nf.scope.pop(inner)
        await nf.tools.execute("t", {}, lambda args: args)  # inner's is gone with it
        nf.scope.pop(outer)
        await nf.tools.execute("t", {}, lambda args: args)  # and outer's

    asyncio.run(run())
    assert order == ["outer", "inner", "outer"]


# --------------------------------------------------------------------------------------------
# The middleware-free path: a managed call with nothing registered skips the pipeline; its
# events must be exactly those the pipeline writes.

def _wire(events):
    return [(e.name, e.kind, e.scope_category, e.category, e.category_profile, e.attributes,
             e.data, e.metadata) for e in events]


def _managed_calls(nf):
    @nf.trace.tool("search", metadata={"v": 1})
    def search(q, limit=2):
        return [q] * limit

    @nf.trace.llm(model="m")
    def chat(prompt):
        return {"choices": [{"finish_reason": "stop"}], "usage": {"total_tokens": 3}}

    search("a")
    search("b", limit=1)
    with pytest.raises(ZeroDivisionError):
        nf.trace.tool("div")(lambda x: x / 0)(1)
    execute(nf, "t", {"x": [1]}, lambda a: {"r": a}, tool_call_id="c1")
    chat("hi")
    run(nf.llm.execute("c", nf.LLMRequest({"authorization": "k", "h": 1}, {"p": 1}),
                       lambda r: "ok", model_name="m"))


def test_middleware_free_path_writes_the_pipelines_events(nf, events):
    assert not nf._middleware.switch.tool and not nf._middleware.switch.llm
    _managed_calls(nf)
    fast = _wire(events)
    events.clear()
    # pass-through middleware in every family that cannot change an event
    nf.intercepts.register_tool_execution("pass", 0, lambda n, a, nxt: nxt(a))
    nf.intercepts.register_llm_execution("pass", 0, lambda n, r, nxt: nxt(r))
    assert nf._middleware.switch.tool and nf._middleware.switch.llm
    _managed_calls(nf)
    assert _wire(events) == fast
    assert len(fast) == 12


def test_switch_follows_global_and_scope_local_registrations(nf):
    switch = nf._middleware.switch
    nf.guardrails.register_llm_sanitize_response("g", 0, lambda r: r)
    assert (switch.tool, switch.llm) == (False, True)
    nf.guardrails.register_tool_sanitize_response("g", 0, lambda n, r: r)
    assert (switch.tool, switch.llm) == (True, True)
    nf.guardrails.deregister_llm_sanitize_response("g")
    nf.guardrails.deregister_tool_sanitize_response("g")
    assert (switch.tool, switch.llm) == (False, False)
    log = []

    @nf.trace.tool("t")
    def t(x):
        return x

    h = nf.scope.push("s", nf.ScopeType.Agent)
    nf.scope_local.register_tool_sanitize_request(h, "s", 0, lambda n, a: log.append(a) or a)
    assert switch.tool
    t(1)
    nf.scope.pop(h)
    t(2)  # the popped scope's middleware is seen by no call
    assert log == [{"x": 1}]
    del h
    gc.collect()
    assert (switch.tool, switch.llm) == (False, False)  # its entry went with its frame
