"""A large generated ATOF trace and its statistics computed directly with NumPy, for checking
``nemoflow summary --stats`` (tests) and timing it (bench)."""

from __future__ import annotations

import numpy as np

# (category, name) of the four children of every agent scope
CHILDREN = (("tool", "search"), ("tool", "fetch"), ("function", "plan"), ("llm", "chat"))
T0_US = 1_780_000_000_000_000  # epoch microseconds (integer timestamps are valid ATOF)
_LINE = ('{"atof_version":"0.1","attributes":[],"category":"%s","category_profile":null,'
         '"data":null,"data_schema":null,"kind":"scope","metadata":%s,"name":"%s",'
         '"parent_uuid":"%s","scope_category":"%s","timestamp":%d,"uuid":"%s"}\n')
_OK = '{"otel.status_code":"OK"}'
_ERROR = '{"otel.status_code":"ERROR","otel.status_description":"boom"}'


def _uuid(i: int) -> str:
    return f"00000000-0000-7000-8000-{i:012x}"


def write(path: str, events: int = 1_000_000, seed: int = 1) -> dict:
    """Write ``events`` events (agent scopes of four sequential children, 10 events each) and
    return the expected statistics per (category, name): count, errors, durations and self
    times in ns (NumPy arrays)."""
    agents = events // 10
    rng = np.random.default_rng(seed)
    # log-uniform child durations from 1 µs to 100 ms, gaps of 0-50 µs
    child_us = np.round(np.exp(rng.uniform(0, np.log(100_000), size=(agents, 4)))).astype(
        np.int64)
    gaps = rng.integers(0, 50, size=(agents, 5))
    failed = rng.random((agents, 5)) < 0.01
    root = _uuid(0)
    expected = {key: {"durations": [], "selfs": [], "errors": 0}
                for key in (("agent", "agent"), *CHILDREN)}
    at = T0_US
    n = 1
    with open(path, "w", encoding="ascii") as f:
        for a in range(agents):
            agent = _uuid(n)
            n += 1
            start = at
            lines = [_LINE % ("agent", "null", "agent", root, "start", start, agent)]
            t = start
            for c, (category, name) in enumerate(CHILDREN):
                t += int(gaps[a, c])
                u = _uuid(n)
                n += 1
                end = t + int(child_us[a, c])
                lines.append(_LINE % (category, "null", name, agent, "start", t, u))
                lines.append(_LINE % (category, _ERROR if failed[a, c] else _OK, name, agent,
                                      "end", end, u))
                t = end
            end = t + int(gaps[a, 4])
            lines.append(_LINE % ("agent", _ERROR if failed[a, 4] else _OK, "agent", root,
                                  "end", end, agent))
            f.write("".join(lines))
            at = end + 1
    durations = child_us * 1000
    agent_ns = (child_us.sum(axis=1) + gaps.sum(axis=1)) * 1000
    for c, key in enumerate(CHILDREN):
        expected[key] = {"durations": durations[:, c], "selfs": durations[:, c],
                         "errors": int(failed[:, c].sum())}
    expected[("agent", "agent")] = {"durations": agent_ns, "selfs": agent_ns - durations.sum(1),
                                    "errors": int(failed[:, 4].sum())}
    return expected


def expected_rows(expected: dict) -> dict:
    """The rows ``summary --stats --json`` should print, computed directly with NumPy."""
    rows = {}
    for (category, name), e in expected.items():
        d = e["durations"]
        p50, p90, p99 = np.percentile(d, (50, 90, 99))
        rows[(category, name)] = {
            "category": category, "name": name, "count": int(d.size), "errors": e["errors"],
            "total_ms": int(d.sum()) / 1e6, "self_ms": int(e["selfs"].sum()) / 1e6,
            "p50_ms": float(p50) / 1e6, "p90_ms": float(p90) / 1e6, "p99_ms": float(p99) / 1e6,
            "max_ms": int(d.max()) / 1e6, "ttfc_p50_ms": None}
    return rows
