def test_scope_pair_parent_links(nf, events):
    with nf.scope.scope("outer", nf.ScopeType.Agent) as outer:
        inner = nf.scope.push("inner", nf.ScopeType.Function)
        nf.scope.pop(inner)
    assert [(e.name, e.scope_category) for e in events] == [
        ("outer", "start"), ("inner", "start"), ("inner", "end"), ("outer", "end")]
    assert events[1].parent_uuid == outer.uuid
