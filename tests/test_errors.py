"""Every error of API.md: its class, its NeMo Flow-compatible message, and that nothing changed."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest


def check_error(info, cls, message):
    err = info.value
    assert type(err) is cls
    assert isinstance(err, RuntimeError)
    assert str(err) == message


def test_error_hierarchy(nf):
    assert issubclass(nf.NemoFlowError, RuntimeError)
    for cls in (nf.AlreadyExistsError, nf.NotFoundError, nf.InvalidArgumentError,
                nf.GuardrailRejectedError, nf.InternalError):
        assert issubclass(cls, nf.NemoFlowError)
        assert issubclass(cls, RuntimeError)
    assert len({nf.AlreadyExistsError, nf.NotFoundError, nf.InvalidArgumentError,
                nf.GuardrailRejectedError, nf.InternalError}) == 5


# ---------------------------------------------------------------------------------------------
# pop


def test_pop_already_popped_handle_is_not_found(nf, events):
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.pop(h)
    with pytest.raises(nf.NotFoundError) as info:
        nf.scope.pop(h)
    check_error(info, nf.NotFoundError, "not found: scope handle not found")
    assert isinstance(info.value, nf.NemoFlowError)
    assert [e.scope_category for e in events] == ["start", "end"]


def test_pop_already_popped_handle_below_open_scopes_is_not_found(nf, events):
    a = nf.scope.push("a", nf.ScopeType.Function)
    nf.scope.pop(a)
    b = nf.scope.push("b", nf.ScopeType.Function)
    with pytest.raises(nf.NotFoundError) as info:
        nf.scope.pop(a)
    check_error(info, nf.NotFoundError, "not found: scope handle not found")
    assert nf.scope.get_handle().uuid == b.uuid
    nf.scope.pop(b)
    assert len(events) == 4


def test_pop_handle_pushed_in_another_thread_is_not_found(nf, events):
    box = {}

    def worker():
        box["open"] = nf.scope.push("open-in-thread", nf.ScopeType.Function)
        closed = nf.scope.push("closed-in-thread", nf.ScopeType.Function)
        nf.scope.pop(closed)
        box["closed"] = closed

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    before = nf.scope.get_handle().uuid
    n = len(events)
    for key in ("open", "closed"):
        with pytest.raises(nf.NotFoundError) as info:
            nf.scope.pop(box[key])
        check_error(info, nf.NotFoundError, "not found: scope handle not found")
    assert len(events) == n
    assert nf.scope.get_handle().uuid == before


def test_pop_handle_pushed_in_another_task_is_not_found(nf, events):
    async def main():
        async def child():
            return nf.scope.push("in-task", nf.ScopeType.Function)

        h = await asyncio.create_task(child())
        with pytest.raises(nf.NotFoundError) as info:
            nf.scope.pop(h)
        check_error(info, nf.NotFoundError, "not found: scope handle not found")

    asyncio.run(main())
    assert [e.scope_category for e in events] == ["start"]


def test_pop_of_handle_already_popped_in_child_task_is_not_found(nf, events):
    async def main():
        h = nf.scope.push("shared", nf.ScopeType.Function)

        async def child():
            nf.scope.pop(h)  # the child's context has ``h`` on top: this pop is legitimate

        await asyncio.create_task(child())
        with pytest.raises(nf.NotFoundError) as info:
            nf.scope.pop(h)
        check_error(info, nf.NotFoundError, "not found: scope handle not found")

    asyncio.run(main())
    assert [e.scope_category for e in events] == ["start", "end"]  # no second end event


def test_pop_of_closed_handle_in_copied_context_is_not_found(nf, events):
    h = nf.scope.push("x", nf.ScopeType.Function)
    ctx = contextvars.copy_context()
    nf.scope.pop(h)
    with pytest.raises(nf.NotFoundError) as info:
        ctx.run(nf.scope.pop, h)
    check_error(info, nf.NotFoundError, "not found: scope handle not found")
    assert [e.scope_category for e in events] == ["start", "end"]  # no second end event


def test_pop_not_on_top_is_invalid_and_changes_nothing(nf, events):
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    middle = nf.scope.push("middle", nf.ScopeType.Function)
    inner = nf.scope.push("inner", nf.ScopeType.Function)
    for h in (outer, middle):
        with pytest.raises(nf.InvalidArgumentError) as info:
            nf.scope.pop(h, output={"o": 1}, metadata={"m": 1})
        check_error(info, nf.InvalidArgumentError,
                    "invalid argument: scope handle is not at the top of the stack")
        assert isinstance(info.value, nf.NemoFlowError)
    assert [(e.name, e.scope_category) for e in events] == [
        ("outer", "start"), ("middle", "start"), ("inner", "start")]
    assert nf.scope.get_handle().uuid == inner.uuid
    nf.scope.event("still-inner")
    assert events[-1].parent_uuid == inner.uuid
    nf.scope.pop(inner)
    nf.scope.pop(middle)
    nf.scope.pop(outer)
    assert [(e.name, getattr(e, "scope_category", None)) for e in events][-3:] == [
        ("inner", "end"), ("middle", "end"), ("outer", "end")]
    # the failed pops left no trace on the later, correct ones
    assert events[-2].data is None and events[-2].metadata is None
    assert nf.scope.get_handle().parent_uuid is None


def test_invalid_pop_keeps_scope_local_subscribers(nf, events):
    outer = nf.scope.push("outer", nf.ScopeType.Agent)
    seen = []
    nf.scope_local.register_subscriber(outer, "local", seen.append)
    inner = nf.scope.push("inner", nf.ScopeType.Function)
    with pytest.raises(nf.InvalidArgumentError):
        nf.scope.pop(outer)
    nf.scope.event("m")
    nf.scope.pop(inner)
    nf.scope.pop(outer)
    assert [e.name for e in seen] == ["inner", "m", "inner", "outer"]


def test_pop_root_is_invalid(nf, events):
    root = nf.scope.get_handle()
    assert root.parent_uuid is None
    with pytest.raises(nf.InvalidArgumentError) as info:
        nf.scope.pop(root)
    check_error(info, nf.InvalidArgumentError, "invalid argument: root scope cannot be removed")
    assert events == []
    assert nf.scope.get_handle().uuid == root.uuid


def test_pop_root_below_open_scope_is_invalid(nf, events):
    root = nf.scope.get_handle()
    h = nf.scope.push("x", nf.ScopeType.Function)
    with pytest.raises(nf.InvalidArgumentError) as info:
        nf.scope.pop(root)
    assert str(info.value) in (
        "invalid argument: root scope cannot be removed",
        "invalid argument: scope handle is not at the top of the stack")
    assert nf.scope.get_handle().uuid == h.uuid
    nf.scope.pop(h)


def test_pop_root_of_created_stack_is_invalid(nf, events):
    stack = nf.create_scope_stack()
    with pytest.raises(nf.InvalidArgumentError) as info:
        nf.scope.pop(stack.handle)
    check_error(info, nf.InvalidArgumentError, "invalid argument: root scope cannot be removed")
    assert events == []


# ---------------------------------------------------------------------------------------------
# registrations


def test_duplicate_subscriber_already_exists(nf):
    calls = []
    nf.subscribers.register("dup", calls.append)
    with pytest.raises(nf.AlreadyExistsError) as info:
        nf.subscribers.register("dup", lambda e: None)
    check_error(info, nf.AlreadyExistsError, "already exists: dup subscriber already exists")
    assert isinstance(info.value, nf.NemoFlowError)
    nf.scope.event("m")
    assert len(calls) == 1  # the first registration is still the one called


def test_duplicate_scope_local_subscriber_already_exists(nf):
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope_local.register_subscriber(h, "dup", lambda e: None)
    with pytest.raises(nf.AlreadyExistsError) as info:
        nf.scope_local.register_subscriber(h, "dup", lambda e: None)
    check_error(info, nf.AlreadyExistsError, "already exists: dup subscriber already exists")
    nf.scope.pop(h)


def test_scope_local_register_on_popped_scope_not_found(nf):
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.pop(h)
    with pytest.raises(nf.NotFoundError) as info:
        nf.scope_local.register_subscriber(h, "late", lambda e: None)
    check_error(info, nf.NotFoundError, f"not found: scope {h.uuid} not found")


def test_scope_local_deregister_on_popped_scope_not_found(nf):
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope_local.register_subscriber(h, "s", lambda e: None)
    nf.scope.pop(h)
    with pytest.raises(nf.NotFoundError) as info:
        nf.scope_local.deregister_subscriber(h, "s")
    check_error(info, nf.NotFoundError, f"not found: scope {h.uuid} not found")


def test_errors_are_catchable_as_runtime_error(nf):
    h = nf.scope.push("x", nf.ScopeType.Function)
    nf.scope.pop(h)
    try:
        nf.scope.pop(h)
    except RuntimeError as exc:  # NeMo Flow users catch RuntimeError
        assert "not found" in str(exc)
    else:
        pytest.fail("no error raised")
