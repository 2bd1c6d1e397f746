"""Edge cases where tracing must neither hang, leak, nor write something unreadable."""

from __future__ import annotations

import gc
import json
import os
import threading

import pytest


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_is_inside_a_subscriber(nf):
    inside, release = threading.Event(), threading.Event()
    seen = []

    def subscriber(event):
        if event.name == "hold":
            inside.set()
            release.wait(5)
        seen.append(event.name)

    nf.subscribers.register("sub", subscriber)
    t = threading.Thread(target=lambda: nf.mark("hold"))
    t.start()
    assert inside.wait(5)
    try:
        pid = os.fork()  # the subscriber's lock is held by t, which the child does not have
        if pid == 0:
            code = 1
            try:
                nf.mark("in-child")  # must not wait forever for that lock
                code = 0 if seen[-1] == "in-child" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        t.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_scope_local_of_an_unreachable_scope_is_released(nf):
    def leak():
        h = nf.scope.push("leaked", nf.ScopeType.Function)
        nf.scope_local.register_subscriber(h, "local", lambda e: None)
        return h

    def run():
        token = nf._core.bind(nf._core.new_root())
        try:
            leak()  # never popped; its context is discarded below
        finally:
            nf._core.unbind(token)

    import contextvars
    contextvars.copy_context().run(run)
    gc.collect()
    assert nf._core.enabled() is False  # nothing left to deliver to


def test_lone_surrogates(nf, events):
    with pytest.raises(ValueError, match="lone surrogate"):
        nf.scope.push("bad\ud800", nf.ScopeType.Function)
    with pytest.raises(ValueError, match="lone surrogate"):
        nf.scope.event("m", category="bad\udfff")
    assert events == []
    with pytest.raises(RuntimeError):
        with nf.scope.scope("s", nf.ScopeType.Function):
            raise RuntimeError("text \udc80 from a bad decode")
    end = json.loads(events[-1].to_json())
    assert end["metadata"]["otel.status_description"] == "text \\udc80 from a bad decode"


def test_attribute_flags_of_another_kind_are_rejected(nf, events):
    with pytest.raises(TypeError, match="ScopeAttributes"):
        nf.scope.push("s", nf.ScopeType.Function, attributes=nf.ToolAttributes.REMOTE)
    with pytest.raises(TypeError, match="ScopeAttributes"):
        nf.scope.scope("s", nf.ScopeType.Function, attributes=nf.LLMAttributes.STREAMING)
    assert events == []
    h = nf.scope.push("s", nf.ScopeType.Function, attributes=3)  # a plain mask is accepted
    nf.scope.pop(h)
    assert events[0].attributes == ["parallel", "relocatable"]


def test_popping_one_handle_from_two_threads_ends_it_once(nf, events):
    import contextvars

    def one_round():
        h = nf.scope.push("s", nf.ScopeType.Function)
        binding = nf.capture()
        outcomes = []

        def pop():
            with nf.bind(binding):
                try:
                    nf.scope.pop(h)
                    outcomes.append("popped")
                except nf.NotFoundError:
                    outcomes.append("not found")

        threads = [threading.Thread(target=pop) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sorted(outcomes)

    for _ in range(200):
        assert contextvars.copy_context().run(one_round) == ["not found", "popped"]
    ends = [e for e in events if e.scope_category == "end"]
    assert len(ends) == 200 and len({e.uuid for e in ends}) == 200


def test_validate_keeps_categories_of_other_writers(nf, tmp_path):
    from nemoflow import cli
    line = {"atof_version": "0.1", "attributes": [], "category": "planner-v2",
            "category_profile": None, "data": None, "data_schema": None, "kind": "scope",
            "metadata": None, "name": "x", "parent_uuid": None, "scope_category": "start",
            "timestamp": "2026-01-01T00:00:00+00:00", "uuid": "u1"}
    end = dict(line, scope_category="end")
    assert cli.validate([line, end]) == []
