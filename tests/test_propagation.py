"""Trace context across processes: PropagationContext, W3C traceparent in and out."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.request
import uuid

import pytest

ROOT = "01a20a36-598b-78ca-8c5b-c7c6d175adb1"
PARENT = "01a20a36-598b-78ca-1111-222233334444"
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TP_ROOT = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
TP_PARENT = "4bf92f35-77b3-4da6-00f0-67aa0ba902b7"


def hexid(u: str) -> str:
    return u.replace("-", "")


def scope_events(events, name, phase="start"):
    return [e for e in events if e.kind == "scope" and e.name == name
            and e.scope_category == phase]


# ---------------------------------------------------------------------------------------------
# PropagationContext: validation, JSON, traceparent out.

def test_validation_messages(nf):
    P = nf.PropagationContext
    with pytest.raises(ValueError, match="invalid character"):
        P("not-a-uuid")
    with pytest.raises(ValueError, match="invalid character"):
        P(str(uuid.uuid4()), "not-a-uuid")
    with pytest.raises(ValueError, match=r"^invalid character: expected an optional prefix "
                                         r"of `urn:uuid:` followed by \[0-9a-fA-F-\], "
                                         r"found `n` at 1$"):
        P("not-a-uuid")
    with pytest.raises(ValueError, match="unsupported propagation context version 2; expected 1"):
        P(str(uuid.uuid4()), version=2)
    with pytest.raises(ValueError, match="invalid character"):
        nf.capture_propagation_context_with_root("not-a-uuid")
    for bad in ("00000000-0000-0000-0000-000000000000", "01a20a36-598b-78ca-0000-000000000000"):
        with pytest.raises(ValueError, match="propagation context parent_uuid is not a usable "
                                             "Relay identifier"):
            P(bad)
        with pytest.raises(ValueError, match="propagation context root_uuid is not a usable "
                                             "Relay identifier"):
            P(PARENT, bad)
    with pytest.raises(ValueError, match="rootless propagation context cannot be converted to "
                                         "traceparent"):
        P(PARENT).to_traceparent()
    with pytest.raises(ValueError, match="invalid length"):
        P("01a20a36598b78ca")
    with pytest.raises(TypeError):
        P(12)


def test_json_round_trip_and_form(nf):
    P = nf.PropagationContext
    rooted = P(PARENT, ROOT)
    assert rooted.to_json() == ('{"version":1,"root_uuid":"%s","parent_uuid":"%s"}'
                                % (ROOT, PARENT))
    assert P(PARENT).to_json() == '{"version":1,"parent_uuid":"%s"}' % PARENT
    for ctx in (rooted, P(PARENT), P(str(uuid.uuid4()), str(uuid.uuid4()))):
        back = P.from_json(ctx.to_json())
        assert back == ctx
        assert (back.version, back.root_uuid, back.parent_uuid) == (
            ctx.version, ctx.root_uuid, ctx.parent_uuid)
    # uuids are normalized; unknown keys and a null root are accepted
    upper = P.from_json('{"version":1,"parent_uuid":"%s","root_uuid":null,"x":1}'
                        % PARENT.upper())
    assert upper.parent_uuid == PARENT and upper.root_uuid is None
    assert P(hexid(PARENT)).parent_uuid == PARENT


def test_from_json_errors(nf):
    P = nf.PropagationContext
    with pytest.raises(ValueError, match="invalid propagation context JSON"):
        P.from_json("not JSON")
    with pytest.raises(ValueError, match="invalid propagation context JSON"):
        P.from_json("[]")
    with pytest.raises(ValueError, match="invalid propagation context JSON: missing field "
                                         "`version`"):
        P.from_json('{"parent_uuid":"%s"}' % PARENT)
    with pytest.raises(ValueError, match="invalid propagation context JSON"):
        P.from_json('{"version":"1","parent_uuid":"%s"}' % PARENT)
    with pytest.raises(ValueError, match="unsupported propagation context version 2; expected 1"):
        P.from_json('{"version":2,"parent_uuid":"%s"}' % uuid.uuid4())
    with pytest.raises(ValueError, match="invalid character"):
        P.from_json('{"version":1,"parent_uuid":"nope"}')


def test_to_traceparent(nf):
    # the strings nemo-relay 0.10.4 gives for the same contexts
    assert (nf.PropagationContext(PARENT, ROOT).to_traceparent()
            == "00-01a20a36598b78ca8c5bc7c6d175adb1-1111222233334444-01")
    assert (nf.PropagationContext(ROOT, ROOT).to_traceparent()
            == "00-01a20a36598b78ca8c5bc7c6d175adb1-8c5bc7c6d175adb1-01")


# ---------------------------------------------------------------------------------------------
# Inbound W3C traceparent.

def test_from_traceparent_maps_and_round_trips(nf):
    ctx = nf.PropagationContext.from_traceparent(TP)
    assert ctx.root_uuid == TP_ROOT and ctx.parent_uuid == TP_PARENT
    assert ctx.to_traceparent() == TP
    assert ctx.tracestate is None
    assert "tracestate" not in ctx.to_json()


@pytest.mark.parametrize("value", [
    "  " + TP + "\t",                                     # surrounding whitespace
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # higher version
    "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-future-fields",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",  # not sampled: still read
])
def test_from_traceparent_accepts(nf, value):
    ctx = nf.PropagationContext.from_traceparent(value)
    assert (ctx.root_uuid, ctx.parent_uuid) == (TP_ROOT, TP_PARENT)
    assert ctx.to_traceparent() == TP  # outgoing flags are always 01


@pytest.mark.parametrize("value", [
    "",
    TP + "-",                                             # version 00 is exactly 55 chars
    TP[:-1],
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # char 56 must be "-"
    TP.upper(),
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
    "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
])
def test_from_traceparent_rejects(nf, value):
    with pytest.raises(ValueError):
        nf.PropagationContext.from_traceparent(value)


def test_from_traceparent_low_zero_trace_id_is_not_usable(nf):
    with pytest.raises(ValueError, match="propagation context root_uuid is not a usable Relay "
                                         "identifier"):
        nf.PropagationContext.from_traceparent(
            "00-4bf92f3577b34da60000000000000000-00f067aa0ba902b7-01")


def test_tracestate_kept_verbatim(nf):
    state = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7"
    ctx = nf.PropagationContext.from_traceparent(TP, state)
    assert ctx.tracestate == state
    joined = nf.PropagationContext.from_traceparent(TP, ["a=1", "b=2 "])
    assert joined.tracestate == "a=1,b=2 "
    assert ctx.to_json() == nf.PropagationContext(TP_PARENT, TP_ROOT).to_json()


# ---------------------------------------------------------------------------------------------
# Stacks made from a context.

def test_rooted_stack_never_emits_its_imported_frames(nf, events):
    stack = nf.create_scope_stack_from_propagation(nf.PropagationContext(PARENT, ROOT))
    with nf.use_scope_stack(stack):
        top = nf.scope.get_handle()
        assert (top.uuid, top.name) == (PARENT, "propagated-parent")
        assert stack.root_uuid == ROOT
        for frame in (top,):
            with pytest.raises(nf.InvalidArgumentError, match="root scope cannot be removed"):
                nf.scope.pop(frame)
        with nf.scope.scope("worker", nf.ScopeType.Agent) as worker:
            assert worker.parent_uuid == PARENT
            nf.scope.event("mark")
            assert nf.capture_traceparent() == (
                f"00-{hexid(ROOT)}-{hexid(worker.uuid)[16:]}-01")
        assert nf.capture_traceparent() == f"00-{hexid(ROOT)}-{hexid(PARENT)[16:]}-01"
    assert [e.name for e in events] == ["worker", "mark", "worker"]
    assert {e.uuid for e in events} & {ROOT, PARENT} == set()
    assert nf.propagation.imported_parent(PARENT) == (hexid(ROOT), None)


def test_rooted_stack_with_root_equal_to_parent(nf, events):
    stack = nf.create_scope_stack_from_propagation(nf.PropagationContext(ROOT, ROOT))
    with nf.use_scope_stack(stack):
        assert nf.scope.get_handle().uuid == ROOT
        assert nf.scope.get_handle().name == "propagated-root"
        with pytest.raises(nf.InvalidArgumentError):
            nf.scope.pop(nf.scope.get_handle())
        with nf.scope.scope("w", nf.ScopeType.Function) as w:
            assert w.parent_uuid == ROOT
    assert [e.name for e in events] == ["w", "w"]


def test_rootless_stack(nf, events):
    parent = str(uuid.uuid4())
    stack = nf.create_scope_stack_from_propagation(nf.PropagationContext(parent))
    with nf.use_scope_stack(stack):
        top = nf.scope.get_handle()
        assert (top.uuid, top.name, top.parent_uuid) == (parent, "propagated-root", None)
        with pytest.raises(nf.InvalidArgumentError, match="no emitted Relay scope is available"):
            nf.capture_traceparent()
        with nf.scope.scope("w", nf.ScopeType.Agent) as w:
            assert w.parent_uuid == parent
            # the first local scope starts a new trace
            assert nf.capture_traceparent() == f"00-{hexid(w.uuid)}-{hexid(w.uuid)[16:]}-01"
            assert nf.capture_propagation_context().root_uuid == w.uuid
    assert [e.name for e in events] == ["w", "w"]
    assert nf.propagation.imported_parent(parent) is None


def test_imported_parent_table_is_bounded(nf):
    first = None
    for _ in range(4097):
        ctx = nf.PropagationContext(str(uuid.uuid4()), ROOT)
        first = first or ctx.parent_uuid
        nf.create_scope_stack_from_propagation(ctx)
    assert nf.propagation.imported_parent(first) is None
    assert nf.propagation.imported_parent(ctx.parent_uuid) == (hexid(ROOT), None)
    assert len(nf.propagation._parents) == 4096


# ---------------------------------------------------------------------------------------------
# Capturing the current position.

def test_capture_traceparent_and_contexts(nf):
    with pytest.raises(nf.InvalidArgumentError, match="^invalid argument: no emitted Relay "
                                                      "scope is available"):
        nf.capture_traceparent()
    assert isinstance(nf.InvalidArgumentError("x"), RuntimeError)
    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        with nf.scope.scope("b", nf.ScopeType.Function) as b:
            assert nf.capture_traceparent() == f"00-{hexid(a.uuid)}-{hexid(b.uuid)[16:]}-01"
            ctx = nf.capture_propagation_context()
            assert (ctx.root_uuid, ctx.parent_uuid) == (a.uuid, b.uuid)
            ctx = nf.capture_rootless_propagation_context()
            assert (ctx.root_uuid, ctx.parent_uuid) == (None, b.uuid)
            ctx = nf.capture_propagation_context_with_root(ROOT)
            assert (ctx.root_uuid, ctx.parent_uuid) == (ROOT, b.uuid)
            assert nf.capture_propagation_context_with_root(None).root_uuid is None
    # no agent scope: the stack's own root is the session root
    with nf.scope.scope("f", nf.ScopeType.Function) as f:
        ctx = nf.capture_propagation_context()
        assert ctx.root_uuid == nf.get_scope_stack().root_uuid and ctx.parent_uuid == f.uuid


def test_capture_inside_managed_calls_points_at_the_call(nf):
    seen = {}

    def tool(args):
        seen["tool"] = (nf.capture_traceparent(), nf.capture_propagation_context().parent_uuid)
        return args

    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        nf.tools.execute_sync("t", {"x": 1}, tool)
        tp, parent = seen["tool"]
        assert tp.startswith(f"00-{hexid(a.uuid)}-") and parent != a.uuid
        assert tp.endswith(f"-{hexid(parent)[16:]}-01")
        # after the call, the stack top again
        assert nf.capture_propagation_context().parent_uuid == a.uuid

    # outside any scope: a managed call alone is a trace of its own
    nf.tools.execute_sync("t", {}, tool)
    tp, parent = seen["tool"]
    assert tp == f"00-{hexid(parent)}-{hexid(parent)[16:]}-01"


def test_tasks_and_threads_capture_their_own_position(nf):
    async def task(name):
        with nf.scope.scope(name, nf.ScopeType.Function) as h:
            await asyncio.sleep(0.001)
            return h.uuid, nf.capture_traceparent()

    async def main():
        with nf.scope.scope("a", nf.ScopeType.Agent) as a:
            got = await asyncio.gather(*(task(f"t{i}") for i in range(5)))
            return a, got

    a, got = asyncio.run(main())
    for h, tp in got:
        assert tp == f"00-{hexid(a.uuid)}-{hexid(h)[16:]}-01"

    results = {}
    with nf.scope.scope("a", nf.ScopeType.Agent) as a2:
        binding = nf.capture()

        def worker(i):
            with nf.bind(binding):
                with nf.scope.scope(f"w{i}", nf.ScopeType.Function) as h:
                    results[i] = (h.uuid, nf.capture_traceparent())

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
    assert len(results) == 4
    for h, tp in results.values():
        assert tp == f"00-{hexid(a2.uuid)}-{hexid(h)[16:]}-01"


# ---------------------------------------------------------------------------------------------
# Carriers.

@pytest.mark.parametrize("key", ["traceparent", "Traceparent", "TRACEPARENT"])
def test_continue_trace_reads_any_case(nf, events, key):
    with nf.continue_trace({key: TP, "TraceState": "k=v", "other": "x"}) as stack:
        assert stack.root_uuid == TP_ROOT
        assert nf.scope.get_handle().uuid == TP_PARENT
        with nf.scope.scope("server", nf.ScopeType.Agent) as server:
            assert server.parent_uuid == TP_PARENT
            headers = nf.inject_traceparent({"TRACEPARENT": "old", "tracestate": "old"})
            assert headers == {"traceparent": f"00-{hexid(TP_ROOT)}-{hexid(server.uuid)[16:]}-01",
                               "tracestate": "k=v"}
    assert nf.propagation.imported_parent(TP_PARENT) == (hexid(TP_ROOT), "k=v")
    assert [e.name for e in events] == ["server", "server"]


def test_continue_trace_reads_http_message_headers(nf):
    msg = http.client.HTTPMessage()
    msg["TraceParent"] = TP
    msg["tracestate"] = "a=1"
    msg["tracestate"] = "b=2"
    with nf.continue_trace(msg):
        assert nf.capture_traceparent() == TP
        assert nf.inject_traceparent({})["tracestate"] == "a=1,b=2"


@pytest.mark.parametrize("carrier", [
    {}, {"traceparent": "garbage"}, {"traceparent": TP.upper()}, {"traceparent": None},
    {"traceparent": [TP, TP]}, {"x": 1}, object(),
])
def test_continue_trace_without_valid_header_starts_a_new_trace(nf, carrier):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        with nf.continue_trace(carrier) as stack:
            assert stack.root_uuid != nf.capture().root_uuid or True
            with nf.scope.scope("server", nf.ScopeType.Agent) as server:
                assert server.parent_uuid != outer.uuid
                assert server.parent_uuid == stack.root_uuid
        assert nf.scope.get_handle() is outer


def test_inject_traceparent_without_a_scope_does_nothing(nf):
    carrier = {"Traceparent": "keep"}
    assert nf.inject_traceparent(carrier) == {"Traceparent": "keep"}
    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        assert nf.inject_traceparent(carrier) == {
            "traceparent": f"00-{hexid(a.uuid)}-{hexid(a.uuid)[16:]}-01"}


# ---------------------------------------------------------------------------------------------
# Managed LLM calls.

def _check_llm(nf, events, seen, name, root_hex, tracestate=None, intercepted=False):
    start = scope_events(events, name)[0]
    headers = seen[-1]
    assert headers["traceparent"] == f"00-{root_hex}-{hexid(start.uuid)[16:]}-01"
    assert "TraceParent" not in headers
    if tracestate is None:
        assert "tracestate" not in headers
    else:
        assert headers["tracestate"] == tracestate
    recorded = start.data["headers"]
    if not intercepted:
        assert "traceparent" not in recorded and "tracestate" not in recorded
    return start, recorded


def test_llm_execute_gets_traceparent_not_recorded(nf, events):
    seen = []

    def provider(request):
        seen.append(dict(request.headers))
        return {"ok": True}

    req = nf.LLMRequest({"TraceParent": "junk", "X-Other": "1"}, {"model": "m"})
    asyncio.run(nf.llm.execute("bare", req, provider))
    _, recorded = _check_llm(nf, events, seen, "bare",
                             hexid(scope_events(events, "bare")[0].uuid))
    assert recorded == {"TraceParent": "junk", "X-Other": "1"}  # the pre-injection request
    assert req.headers == {"TraceParent": "junk", "X-Other": "1"}  # the caller's is untouched

    with nf.scope.scope("outer", nf.ScopeType.Agent, metadata={"session_id": "S1"}) as outer:
        with nf.scope.scope("inner", nf.ScopeType.Agent, metadata={"subagent_id": "SUB"}):
            with nf.scope.scope("fn", nf.ScopeType.Function):
                nf.llm.execute_sync("nested", nf.LLMRequest(
                    {"x-dynamo-parent-session-id": "zz"}, {}), provider)
        asyncio.run(nf.llm.execute("one", nf.LLMRequest(
            {"X-Dynamo-Parent-Session-Id": "zz"}, {}), provider))
    _, recorded = _check_llm(nf, events, seen[:2], "nested", hexid(outer.uuid))
    assert recorded == {"x-dynamo-session-id": "SUB", "x-dynamo-parent-session-id": "S1"}
    _, recorded = _check_llm(nf, events, seen, "one", hexid(outer.uuid))
    # as the reference: only the lowercase name is removed
    assert recorded == {"X-Dynamo-Parent-Session-Id": "zz", "x-dynamo-session-id": "S1"}


def test_llm_calls_with_middleware_get_traceparent(nf, events):
    seen = []
    nf.intercepts.register_llm_request(
        "add", 1, False, lambda name, req, ann: (
            nf.LLMRequest({**req.headers, "traceparent": "from-intercept"}, req.content), ann))

    def provider(request):
        seen.append(dict(request.headers))
        return {}

    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        asyncio.run(nf.llm.execute("mw", nf.LLMRequest({}, {}), provider))
    _, recorded = _check_llm(nf, events, seen, "mw", hexid(a.uuid), intercepted=True)
    # the start event records the request as the intercepts left it, before injection
    assert recorded == {"traceparent": "from-intercept", "x-dynamo-session-id": "a"}


def test_llm_calls_continue_an_imported_trace_with_tracestate(nf, events):
    seen = []

    def provider(request):
        seen.append(dict(request.headers))
        return {}

    with nf.continue_trace({"traceparent": TP, "tracestate": "v=1"}):
        nf.llm.execute_sync("imported", nf.LLMRequest({"TraceState": "x"}, {}), provider)
        with nf.scope.scope("w", nf.ScopeType.Agent):
            nf.llm.execute_sync("imported2", nf.LLMRequest({}, {}), provider)
    start, recorded = _check_llm(nf, events, seen[:1], "imported", hexid(TP_ROOT), "v=1")
    assert start.parent_uuid == TP_PARENT
    assert recorded == {"TraceState": "x"}
    _, recorded = _check_llm(nf, events, seen, "imported2", hexid(TP_ROOT), "v=1")
    assert recorded == {"x-dynamo-session-id": "w"}


def test_streamed_and_decorated_llm_calls_get_traceparent(nf, events):
    seen = []

    async def stream(request):
        seen.append(dict(request.headers))
        yield {"choices": [{"delta": {"content": "hi"}}]}

    async def main():
        it = nf.llm.stream_execute("streamed", nf.LLMRequest({}, {}), stream,
                                   lambda c: None, lambda: {"done": True})
        return [c async for c in it]

    with nf.scope.scope("a", nf.ScopeType.Agent) as a:
        assert len(asyncio.run(main())) == 1
    _check_llm(nf, events, seen, "streamed", hexid(a.uuid))

    # @nf.trace.llm hands the function the request's content: the header reaches the request
    # seen by execution intercepts
    nf.intercepts.register_llm_execution(
        "spy", 1, lambda name, request, nxt: (seen.append(dict(request.headers)), nxt(request))[1])

    @nf.trace.llm(name="deco")
    def chat(prompt):
        return "ok"

    @nf.trace.llm(name="adeco")
    async def achat(prompt):
        return "ok"

    with nf.scope.scope("b", nf.ScopeType.Agent) as b:
        assert chat("x") == "ok"
        _check_llm(nf, events, seen, "deco", hexid(b.uuid))
        assert asyncio.run(achat("x")) == "ok"
        _check_llm(nf, events, seen, "adeco", hexid(b.uuid))


# ---------------------------------------------------------------------------------------------
# Two processes over HTTP.

_CHILD = textwrap.dedent("""
    import http.server, json, sys
    import nemoflow as nf
    out = sys.argv[1]
    lines = open(out, "w")
    nf.subscribers.register("jsonl", lambda e: (lines.write(e.to_json() + "\\n"), lines.flush()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with nf.continue_trace(self.headers):
                with nf.scope.scope("worker", nf.ScopeType.Agent):
                    with nf.scope.scope("step", nf.ScopeType.Function):
                        tp = nf.capture_traceparent()
            body = json.dumps({"traceparent": tp, "backend": nf.BACKEND}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.handle_request()
""")


def test_two_processes_share_one_trace_over_http(nf, events, tmp_path):
    out = tmp_path / "child.jsonl"
    env = dict(os.environ)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out)], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())

        def provider(request):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat", data=b"{}",
                                         headers=request.headers, method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        with nf.scope.scope("agent", nf.ScopeType.Agent) as agent:
            reply = nf.llm.execute_sync("remote", nf.LLMRequest({}, {}), provider)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
        child.stdout.close()
    assert reply["backend"] == nf.BACKEND
    llm = scope_events(events, "remote")[0]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    worker = next(d for d in lines if d["name"] == "worker")
    # the child's top scope hangs from the propagated parent: the caller's trace id (the
    # outermost scope) followed by the LLM span's id
    assert worker["parent_uuid"] == str(uuid.UUID(hexid(agent.uuid)[:16] + hexid(llm.uuid)[16:]))
    trace_id = reply["traceparent"].split("-")[1]
    assert trace_id == hexid(agent.uuid)
    assert {d["uuid"] for d in lines} & {agent.uuid, llm.uuid} == set()


def test_request_intercepts_add_the_current_traceparent(nf):
    nf.intercepts.register_llm_request(
        "mark", 1, False, lambda name, req, ann: (
            nf.LLMRequest(req.headers, {**req.content, "seen": True}), {"a": 1}))
    req = nf.LLMRequest({"TraceParent": "old"}, {})
    out, annotated = nf.llm.request_intercepts("m", req)
    assert out.headers == {"TraceParent": "old"} and out.content == {"seen": True}
    assert annotated == {"a": 1}
    with nf.scope.scope("ag", nf.ScopeType.Agent) as ag:
        out, _ = nf.llm.request_intercepts("m", req)
        assert out.headers == {"traceparent": f"00-{hexid(ag.uuid)}-{hexid(ag.uuid)[16:]}-01",
                               "x-dynamo-session-id": "ag"}
    assert req.headers == {"TraceParent": "old"}


def test_capture_inside_streamed_calls_points_at_the_call(nf, events):
    seen = []

    async def source(request):
        seen.append(nf.capture_propagation_context().parent_uuid)
        yield {"choices": []}
        seen.append(nf.capture_propagation_context().parent_uuid)

    async def main():
        with nf.scope.scope("a", nf.ScopeType.Agent) as a:
            async for _ in nf.llm.stream_execute("s", nf.LLMRequest({}, {}), source,
                                                 lambda c: None, lambda: None):
                # the consumer's code between items is not inside the call
                seen.append(("consumer", nf.capture_propagation_context().parent_uuid))
            return a

    a = asyncio.run(main())
    call = scope_events(events, "s")[0].uuid
    assert seen == [call, ("consumer", a.uuid), call]

    @nf.trace.tool
    def rows(n):
        for _ in range(n):
            yield nf.capture_propagation_context().parent_uuid

    with nf.scope.scope("b", nf.ScopeType.Agent):
        got = list(rows(2))
    tool = next(e.uuid for e in events if e.kind == "scope" and e.scope_category == "start"
                and e.name.endswith("rows"))
    assert got == [tool, tool]
