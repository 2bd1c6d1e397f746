"""``nemoflow summary --stats``: exact statistics on a constructed trace, several files, JSON,
sorting, the plain-text fallback without ``rich``, and bounded memory on a large file."""

from __future__ import annotations

import builtins
import io
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest

from nemoflow import cli
from nemoflow.exporters.memory import rows_to_numpy

ROOT = "00000000-0000-7000-8000-000000000000"
TS = "2026-01-01T00:00:{:02d}.{:09d}+00:00"

OPENAI_END = {"id": "c1", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
# Anthropic counts cache reads apart from input_tokens: the prompt includes them (20 + 3).
ANTHROPIC_END = {"id": "m1", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
                 "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                 "usage": {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 3}}


def _ts(ns):
    return TS.format(ns // 1_000_000_000, ns % 1_000_000_000)


def _uuid(i):
    return f"00000000-0000-7000-8000-{i:012d}"


class Trace:
    """Builds ATOF lines; ``scope`` returns the uuid."""

    def __init__(self, first=1):
        self.lines = []
        self.n = first

    def scope(self, name, category, start, end, parent=ROOT, status="OK", data=None,
              profile=None):
        self.n += 1
        u = _uuid(self.n)
        for phase, t, d, meta, prof in (("start", start, None, None, None),
                                        ("end", end, data, {"otel.status_code": status}, profile)):
            self.lines.append((t, {
                "atof_version": "0.1", "attributes": [], "category": category,
                "category_profile": prof, "data": d, "data_schema": None, "kind": "scope",
                "metadata": meta, "name": name, "parent_uuid": parent,
                "scope_category": phase, "timestamp": _ts(t), "uuid": u}))
        return u

    def mark(self, name, t, parent):
        self.n += 1
        self.lines.append((t, {"atof_version": "0.1", "category": None, "category_profile": None,
                               "data": None, "data_schema": None, "kind": "mark",
                               "metadata": None, "name": name, "parent_uuid": parent,
                               "timestamp": _ts(t), "uuid": _uuid(self.n)}))

    def bytes(self):
        ordered = sorted(self.lines, key=lambda x: x[0])  # emission order: by time
        return b"".join(orjson.dumps(ev) + b"\n" for _, ev in ordered)


TOOL_NS = [1_000, 2_000, 3_000, 4_000, 10_000, 7_000]


def _constructed(first=1):
    """An agent (1 ms) with 6 tool calls (one failing), two LLM calls and a mark."""
    t = Trace(first)
    agent = t.scope("agent", "agent", 0, 1_000_000)
    at = 10_000
    for i, d in enumerate(TOOL_NS):
        t.scope("search", "tool", at, at + d, agent, status="ERROR" if i == 2 else "OK")
        at += d + 100
    step = t.scope("step", "function", 100_000, 600_000, agent)
    t.scope("chat", "llm", 110_000, 310_000, step, data=OPENAI_END,
            profile={"time_to_first_chunk": 0.25})
    t.scope("chat", "llm", 320_000, 420_000, step, data=ANTHROPIC_END)
    t.mark("done", 700_000, agent)
    return t.bytes()


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _inproc(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys, *args):
    code, out, err = _inproc(capsys, "summary", "--json", *args)
    assert code == 0, err
    return orjson.loads(out)


def _by_name(result):
    return {(r["category"], r["name"]): r for r in result["scopes_by_name"]}


def test_exact_statistics(tmp_path, capsys):
    path = _write(tmp_path, "t.jsonl", _constructed())
    result = _json(capsys, path)
    assert (result["events"], result["scopes"], result["marks"], result["errors"]) == \
        (21, 10, 1, 1)
    rows = _by_name(result)
    tool = rows[("tool", "search")]
    d = np.array(TOOL_NS)
    assert (tool["count"], tool["errors"]) == (6, 1)
    assert tool["total_ms"] == d.sum() / 1e6
    assert tool["self_ms"] == d.sum() / 1e6  # leaves: self time is the duration
    for p in (50, 90, 99):
        assert tool[f"p{p}_ms"] == pytest.approx(np.percentile(d, p) / 1e6, rel=1e-12)
    assert tool["max_ms"] == 10_000 / 1e6
    # self time = duration minus the children's durations
    assert rows[("agent", "agent")]["self_ms"] == (1_000_000 - d.sum() - 500_000) / 1e6
    assert rows[("function", "step")]["self_ms"] == (500_000 - 200_000 - 100_000) / 1e6
    chat = rows[("llm", "chat")]
    assert (chat["count"], chat["total_ms"], chat["ttfc_p50_ms"]) == (2, 0.3, 250.0)
    assert tool["ttfc_p50_ms"] is None
    models = {m["model"]: m for m in result["models"]}
    assert models == {
        "gpt-4o-2024-08-06": {"model": "gpt-4o-2024-08-06", "calls": 1, "input_tokens": 10,
                              "output_tokens": 5, "ttfc_p50_ms": 250.0},
        "claude-sonnet-4": {"model": "claude-sonnet-4", "calls": 1, "input_tokens": 23,
                            "output_tokens": 7, "ttfc_p50_ms": None}}


def test_json_schema(tmp_path, capsys):
    path = _write(tmp_path, "t.jsonl", _constructed())
    result = _json(capsys, path)
    assert set(result) == {"events", "scopes", "marks", "errors", "open", "unmatched_ends",
                           "sort", "scopes_by_name", "models", "files"}
    assert result["files"] == [path]
    for row in result["scopes_by_name"]:
        assert set(row) == {"category", "name", "count", "errors", "total_ms", "self_ms",
                            "p50_ms", "p90_ms", "p99_ms", "max_ms", "ttfc_p50_ms"}
        assert isinstance(row["count"], int) and isinstance(row["p99_ms"], float)
    for row in result["models"]:
        assert set(row) == {"model", "calls", "input_tokens", "output_tokens", "ttfc_p50_ms"}


def test_several_files_and_globs_are_merged(tmp_path, capsys):
    a = _write(tmp_path, "a.jsonl", _constructed(1))
    _write(tmp_path, "b.jsonl", _constructed(100))
    one = _json(capsys, a)
    both = _json(capsys, str(tmp_path / "*.jsonl"))
    assert both["files"] == [a, str(tmp_path / "b.jsonl")]
    assert both["events"] == 2 * one["events"]
    tool = _by_name(both)[("tool", "search")]
    d = np.array(TOOL_NS * 2)
    assert (tool["count"], tool["errors"], tool["total_ms"]) == (12, 2, d.sum() / 1e6)
    assert tool["p90_ms"] == pytest.approx(np.percentile(d, 90) / 1e6, rel=1e-12)
    assert {m["model"]: m["input_tokens"] for m in both["models"]} == \
        {"gpt-4o-2024-08-06": 20, "claude-sonnet-4": 46}
    # several files without --stats: the statistics, not a tree
    code, out, _ = _inproc(capsys, "summary", a, str(tmp_path / "b.jsonl"))
    assert code == 0 and "42 events in 2 file(s)" in out and "search" in out


def test_glob_matching_nothing(tmp_path, capsys):
    code, _, err = _inproc(capsys, "summary", str(tmp_path / "none*.jsonl"))
    assert code == 1 and "no file matches" in err


@pytest.mark.parametrize("key", ["count", "total", "self", "p99", "max", "errors", "name"])
def test_sort(tmp_path, capsys, key):
    path = _write(tmp_path, "t.jsonl", _constructed())
    rows = _json(capsys, "--sort", key, path)["scopes_by_name"]
    if key == "name":
        assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
        return
    field = key if key in ("count", "errors") else f"{key}_ms"
    values = [r[field] for r in rows]
    assert values == sorted(values, reverse=True)


def test_one_file_still_prints_the_tree(tmp_path, capsys):
    path = _write(tmp_path, "t.jsonl", _constructed())
    code, out, _ = _inproc(capsys, "summary", path)
    assert code == 0 and out.startswith("21 events: 10 scopes, 1 marks, 1 errors, 1 trace(s)")
    assert "\n    search [tool]" in out


def test_plain_text_without_rich(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):
        if name == "rich" or name.startswith("rich."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    path = _write(tmp_path, "t.jsonl", _constructed())
    code, out, err = _inproc(capsys, "summary", "--stats", "--progress", path)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "21 events in 1 file(s): 10 scopes, 1 marks, 1 errors"
    header = lines[lines.index("Scopes") + 1]
    assert header.split() == ["type", "name", "count", "errors", "total", "ms", "self", "ms",
                              "p50", "ms", "p90", "ms", "p99", "ms", "max", "ms", "ttfc", "p50",
                              "ms"]
    search = next(line for line in lines if " search " in line)
    assert search.split()[:4] == ["tool", "search", "6", "1"]
    assert "0.027" in search.split()  # total ms, right-aligned under its header
    assert "LLM models" in lines and any("claude-sonnet-4" in line for line in lines)
    assert "\rreading 0 / 0 MB" in err  # the plain progress line


def test_rich_tables(tmp_path, capsys):
    pytest.importorskip("rich")
    path = _write(tmp_path, "t.jsonl", _constructed())
    code, out, _ = _inproc(capsys, "summary", "--stats", path)
    assert code == 0
    assert "┃" in out or "│" in out  # drawn by rich
    assert "search" in out and "gpt-4o-2024-08-06" in out
    # the tree reads with a progress bar too, on stderr only
    code, out, err = _inproc(capsys, "summary", "--progress", path)
    assert code == 0 and out.startswith("21 events: 10 scopes") and "reading" in err


def test_real_command(tmp_path):
    a = _write(tmp_path, "a.jsonl", _constructed(1))
    b = _write(tmp_path, "b.jsonl", _constructed(100))
    proc = subprocess.run([sys.executable, "-m", "nemoflow", "summary", "--json", "--sort",
                           "count", a, b], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = orjson.loads(proc.stdout)
    assert result["scopes_by_name"][0]["name"] == "search"
    assert result["scopes_by_name"][0]["count"] == 12
    proc = subprocess.run([sys.executable, "-m", "nemoflow", "summary", "--stats", "-"],
                          input=_constructed(), capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0 and b"search" in proc.stdout, proc.stderr


def test_bad_input_in_stats_mode(tmp_path, capsys):
    good = _write(tmp_path, "a.jsonl", _constructed())
    bad = _write(tmp_path, "b.jsonl", _constructed()[:-20])
    code, out, err = _inproc(capsys, "summary", "--stats", good, bad)
    assert code == 1 and out == ""
    assert err.startswith(f"nemoflow: error: {bad}:21: truncated line")


def test_shares_the_recorder_table():
    table = rows_to_numpy([("u", "p", "n", "scope", "tool", 10, 25, "OK", 1)])
    assert table["duration_ns"][0] == 15 and table["depth"][0] == 1
    assert table.dtype.names[:3] == ("uuid", "parent_uuid", "name")


def _large(path, scopes):
    """``scopes`` tool scopes (2 events each) with varied durations, written fast."""
    head = (b'{"atof_version":"0.1","attributes":[],"category":"tool","category_profile":null,'
            b'"data":{"payload":"' + b"x" * 200 + b'"},"data_schema":null,"kind":"scope",'
            b'"metadata":null,"name":"t')
    durations = (np.arange(scopes, dtype=np.int64) * 7919) % 100_003 + 1
    with open(path, "wb") as f:
        for i in range(scopes):
            t0 = i * 200_000
            u = b"00000000-0000-7000-8000-%012d" % i
            for phase, t in ((b"start", t0), (b"end", t0 + int(durations[i]))):
                f.write(head + b"%d" % (i % 7) + b'","parent_uuid":null,"scope_category":"'
                        + phase + b'","timestamp":"'
                        + _ts(t).encode() + b'","uuid":"' + u + b'"}\n')
    return durations


_PEAK = """
import io, resource, sys
from contextlib import redirect_stdout
from nemoflow import cli
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with redirect_stdout(io.StringIO()):
    assert cli.main(["summary", "--json", sys.argv[1]]) == 0
base = peak()
out = io.StringIO()
with redirect_stdout(out):
    assert cli.main(["summary", "--json", sys.argv[2]]) == 0
sys.stdout.write(out.getvalue())
sys.stderr.write(f"{base} {peak()}")
"""


def test_large_file_bounded_memory(tmp_path):
    path = str(tmp_path / "big.jsonl")
    durations = _large(path, 100_000)  # 200k events, ~95 MB
    small = _write(tmp_path, "small.jsonl", _constructed())
    proc = subprocess.run([sys.executable, "-c", _PEAK, small, path], capture_output=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = orjson.loads(proc.stdout)
    assert result["events"] == 200_000
    names = np.arange(100_000) % 7
    for row in result["scopes_by_name"]:
        d = durations[names == int(row["name"][1:])]
        assert row["count"] == d.size and row["total_ms"] == d.sum() / 1e6
        assert row["p50_ms"] == pytest.approx(np.percentile(d, 50) / 1e6, rel=1e-12)
        assert row["p99_ms"] == pytest.approx(np.percentile(d, 99) / 1e6, rel=1e-12)
        assert row["max_ms"] == d.max() / 1e6
    base, peak = map(int, proc.stderr.split())
    # the events are not kept: the growth is a fraction of the file's size
    size = os.path.getsize(path)
    assert peak - base < size / 4, (base, peak, size)


def test_progress_callback_counts_every_byte(tmp_path):
    data = _constructed()
    path = _write(tmp_path, "t.jsonl", data)
    seen = []
    assert len(list(cli.iter_events(path, on_read=seen.append))) == 21
    assert sum(seen) == len(data)


def test_stats_render_to_any_stream(tmp_path):
    from nemoflow._cli_stats import Stats, render_plain

    stats = Stats(cli._ts_ns)
    for ev in cli.iter_events(_write(tmp_path, "t.jsonl", _constructed())):
        stats.add(ev)
    text = render_plain(stats.result("count"), 1)
    assert io.StringIO(text).readline().startswith("21 events")
