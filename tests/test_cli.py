"""The ``nemoflow`` command on good and bad input: one line on stderr and an exit code, never a
traceback. Most cases run the real command in a subprocess; the cheap ones run in-process."""

from __future__ import annotations

import gzip
import importlib.metadata
import os
import subprocess
import sys
import tracemalloc

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nemoflow import cli

ROOT = "00000000-0000-7000-8000-000000000000"
TS = "2026-01-01T00:00:00.{:09d}+00:00"


def _event(kind, name, uuid, parent, t, phase=None, category="function", data=None, meta=None):
    ev = {"atof_version": "0.1", "category_profile": None, "data": data, "data_schema": None,
          "kind": kind, "metadata": meta, "name": name, "parent_uuid": parent,
          "timestamp": TS.format(t), "uuid": uuid, "category": category}
    if kind == "scope":
        ev["attributes"] = []
        ev["scope_category"] = phase
    return orjson.dumps(ev, option=orjson.OPT_SORT_KEYS) + b"\n"


def _uuid(i):
    return f"00000000-0000-7000-8000-{i:012d}"


def _trace(n=2):
    """A valid trace: an agent scope around ``n`` tool scopes and a mark."""
    out = [_event("scope", "agent", _uuid(1), ROOT, 1000, "start", "agent", {"q": 1})]
    for i in range(n):
        u = _uuid(10 + i)
        out.append(_event("scope", f"tool{i}", u, _uuid(1), 2000 + 10 * i, "start", "tool"))
        out.append(_event("scope", f"tool{i}", u, _uuid(1), 2005 + 10 * i, "end", "tool",
                          meta={"otel.status_code": "OK"}))
    out.append(_event("mark", "done", _uuid(2), _uuid(1), 9000, data={"ok": True}))
    out.append(_event("scope", "agent", _uuid(1), ROOT, 10000, "end", "agent",
                      meta={"otel.status_code": "OK"}))
    return b"".join(out)


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _run(*args, stdin=None, timeout=30):
    proc = subprocess.run([sys.executable, "-m", "nemoflow", *args], input=stdin,
                          capture_output=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


GOOD_SUMMARY = """7 events: 3 scopes, 1 marks, 0 errors, 1 trace(s)
  agent [agent]    0.009 ms OK
    tool0 [tool]    0.000 ms OK
    tool1 [tool]    0.000 ms OK
    • done {"ok":true}
"""


def test_summary_of_a_valid_file_is_unchanged(tmp_path, capsys):
    path = _write(tmp_path, "t.jsonl", _trace())
    assert cli.main(["summary", path]) == 0
    assert capsys.readouterr().out == GOOD_SUMMARY
    assert cli.main(["validate", path]) == 0
    assert capsys.readouterr().out == f"{path}: 7 events, 0 problems\n"


def test_stdin_for_every_command(tmp_path):
    data = _trace()
    assert _run("summary", "-", stdin=data) == (0, GOOD_SUMMARY, "")
    assert _run("validate", "-", stdin=data) == (0, "<stdin>: 7 events, 0 problems\n", "")
    code, out, err = _run("convert", "-", "--to", "atif", stdin=data)
    assert (code, err) == (0, "")
    assert orjson.loads(out)["session_id"] == _uuid(1)


def test_gzip_is_read_transparently(tmp_path, capsys):
    data = _trace()
    path = _write(tmp_path, "t.jsonl.gz", gzip.compress(data))
    assert cli.main(["summary", path]) == 0
    assert capsys.readouterr().out == GOOD_SUMMARY
    plain = _write(tmp_path, "t.jsonl", data)
    assert cli.main(["convert", path, "--to", "atif"]) == 0
    from_gz = capsys.readouterr().out
    assert cli.main(["convert", plain, "--to", "atif"]) == 0
    assert capsys.readouterr().out == from_gz
    # by content, not by name: a compressed stream on stdin too
    assert _run("summary", "-", stdin=gzip.compress(data)) == (0, GOOD_SUMMARY, "")


def _bad_inputs(tmp_path):
    good = _trace().splitlines(keepends=True)
    return {
        "missing": (str(tmp_path / "nope.jsonl"), "{}: no such file"),
        "directory": (str(tmp_path), "{}: is a directory, not a trace file"),
        "empty": (_write(tmp_path, "empty.jsonl", b""), "{}: empty, no ATOF events"),
        "blank": (_write(tmp_path, "blank.jsonl", b"\n  \n"), "{}: empty, no ATOF events"),
        "truncated": (_write(tmp_path, "trunc.jsonl", b"".join(good[:3]) + good[3][:40]),
                      "{}:4: truncated line, no newline at the end of the file (invalid JSON: "
                      "unexpected end of data, column 41)"),
        "not json": (_write(tmp_path, "text.jsonl", good[0] + b"hello world\n" + good[1]),
                     "{}:2: invalid JSON (unexpected character, expected a JSON value, "
                     "column 1)"),
        "chrome": (_write(tmp_path, "c.json", b'{"traceEvents":[{"name":"a","ph":"X","ts":1,'
                          b'"dur":2,"pid":1,"tid":1}]}\n'),
                   "{}:1: a Chrome trace (JSON), not ATOF JSONL"),
        "chrome unfinished": (_write(tmp_path, "c2.json", b'{"traceEvents":[{"name":"a",'),
                              "{}:1: a Chrome trace (JSON), not ATOF JSONL"),
        "chrome array": (_write(tmp_path, "c3.json", b'[{"name":"a","ph":"B","ts":1}]\n'),
                         "{}:1: a Chrome trace (JSON array), not ATOF JSONL"),
        "pretty json": (_write(tmp_path, "p.json", b'{\n  "traceEvents": []\n}\n'),
                        "{}:1: a multi-line JSON document (a Chrome trace, an ATIF file?), not "
                        "ATOF JSONL (one event object per line)"),
        "otlp": (_write(tmp_path, "o.json", b'{"resourceSpans":[{"scopeSpans":[]}]}\n'),
                 "{}:1: an OTLP/JSON export, not ATOF JSONL"),
        "atif": (_write(tmp_path, "a.json", b'{"schema_version":"ATIF-v1.4","steps":[]}\n'),
                 "{}:1: an ATIF trajectory, not ATOF JSONL"),
        "truncated gzip": (_write(tmp_path, "t.jsonl.gz", gzip.compress(_trace(50))[:300]),
                           None),
    }


def _check_one_line(case, command, path, message, code, out, err):
    assert code == 1, case
    assert "Traceback" not in err, case
    if message is None:
        assert err.startswith(f"nemoflow: error: {path}:"), case
        assert "corrupt or truncated gzip data" in err, case
    else:
        assert err == f"nemoflow: error: {message.format(path)}\n", case
    assert err.count("\n") == 1, case
    if command != "validate":
        assert out == "", case


@pytest.mark.parametrize("command", ["summary", "validate", "convert"])
def test_unreadable_input_is_one_line_and_exit_1(tmp_path, capsys, command):
    extra = ["--to", "atif"] if command == "convert" else []
    for case, (path, message) in _bad_inputs(tmp_path).items():
        if command == "validate" and case in ("truncated", "not json"):
            continue  # validate reports bad lines and keeps going (below)
        code = cli.main([command, path, *extra])
        out, err = capsys.readouterr()
        _check_one_line(case, command, path, message, code, out, err)


def test_unreadable_input_from_the_real_command(tmp_path):
    cases = _bad_inputs(tmp_path)
    for case in ("missing", "directory", "empty", "truncated", "chrome", "otlp"):
        path, message = cases[case]
        _check_one_line(case, "summary", path, message, *_run("summary", path))


def test_bad_event_lines_name_the_line_in_summary(tmp_path, capsys):
    good = _trace().splitlines(keepends=True)
    cases = {
        b'{"kind":"scope"}\n': "scope event without data, name, parent_uuid, timestamp, uuid, "
                               "category, metadata, scope_category",
        b'{"name":"x"}\n': 'not an ATOF event (no "kind" field)',
        b'{"kind":"span"}\n': "unknown kind 'span'",
        b"[1, 2]\n": "a JSON array, not ATOF JSONL (one event object per line)",
        b"42\n": "not an ATOF event (a JSON int, not an object)",
        good[1].replace(b'"2026-01-01T', b'"yesterday-'):
            "timestamp 'yesterday-00:00:00.000002000+00:00' is not RFC 3339 or epoch "
            "microseconds",
        good[1].replace(b'"start"', b'"middle"'): "scope_category 'middle'",
        good[1].replace(f'"uuid":"{_uuid(10)}"'.encode(), b'"uuid":[1]'):
            "uuid [1] is not a string",
    }
    for line, reason in cases.items():
        path = _write(tmp_path, "t.jsonl", good[0] + line + b"".join(good[1:]))
        assert cli.main(["summary", path]) == 1
        assert capsys.readouterr().err == f"nemoflow: error: {path}:2: {reason}\n"


def test_validate_reports_every_bad_line_and_keeps_going(tmp_path):
    good = _trace().splitlines(keepends=True)
    data = (good[0] + b"garbage\n" + good[1] + b"\n" + b'{"kind":"span"}\n' + good[2]
            + good[2] + good[4].replace(b'"0.1"', b'"0.2"') + good[5] + good[3][:30])
    path = _write(tmp_path, "bad.jsonl", data)
    code, out, err = _run("validate", path)
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        f"{path}:2: invalid JSON (unexpected character, expected a JSON value, column 1)",
        f"{path}:5: unknown kind 'span'",
        f"{path}:7: end of {_uuid(10)} without a start",
        f"{path}:8: atof_version '0.2'",
        f"{path}:8: end of {_uuid(11)} without a start",
        f"{path}:10: truncated line, no newline at the end of the file (invalid JSON: "
        "unexpected end of data, column 31)",
        f"{path}:1: scope 'agent' ({_uuid(1)}) has no end event",
        f"{path}: 9 events, 7 problems",
    ]


def test_validate_keeps_the_list_api(tmp_path):
    events = [orjson.loads(line) for line in _trace().splitlines()]
    assert cli.validate(events) == []
    assert cli.validate(events[:-1]) == [f"scope 'agent' ({_uuid(1)}) has no end event"]
    assert cli.validate([{"kind": "x"}]) == ["line 1: unknown kind 'x'"]
    # read_events is the library's reader: an empty file is an empty list
    assert cli.read_events(_write(tmp_path, "e.jsonl", b"")) == []


def test_version():
    expected = f"nemoflow {importlib.metadata.version('nemoflow')}\n"
    assert _run("--version") == (0, expected, "")


def test_no_arguments_print_the_help_with_exit_2(capsys):
    code, out, err = _run()
    assert (code, out) == (2, "")
    assert err.startswith("usage: nemoflow [-h] [--version] COMMAND ...")
    for command in ("summary", "validate", "convert"):
        assert command in err
    assert cli.main([]) == 2
    assert capsys.readouterr().err == err
    script = os.path.join(os.path.dirname(sys.executable), "nemoflow")
    if os.path.exists(script):  # the console script installed with the package
        proc = subprocess.run([script], capture_output=True, timeout=30, check=False)
        assert (proc.returncode, proc.stderr.decode()) == (2, err)


def test_usage_errors_exit_2():
    code, _out, err = _run("summary")
    assert code == 2
    assert "the following arguments are required: TRACE" in err
    code, _out, err = _run("convert", "x.jsonl", "--to", "pdf")
    assert code == 2
    assert "Traceback" not in err


def test_convert_to_an_unwritable_output(tmp_path):
    path = _write(tmp_path, "t.jsonl", _trace())
    code, _out, err = _run("convert", path, "--to", "atif", "-o", str(tmp_path))
    assert code == 1
    assert err.startswith(f"nemoflow: error: {tmp_path}: cannot write (")
    assert err.count("\n") == 1


def test_a_5000_deep_trace(tmp_path):
    depth = 5000
    lines = [_event("scope", f"s{i}", _uuid(i + 1), _uuid(i) if i else ROOT, i, "start")
             for i in range(depth)]
    lines.append(_event("mark", "bottom", _uuid(depth + 1), _uuid(depth), depth))
    lines += [_event("scope", f"s{i}", _uuid(i + 1), _uuid(i) if i else ROOT, 2 * depth - i,
                     "end", meta={"otel.status_code": "OK"}) for i in reversed(range(depth))]
    path = _write(tmp_path, "deep.jsonl.gz", gzip.compress(b"".join(lines)))
    code, out, err = _run("summary", path)
    assert (code, err) == (0, "")
    out = out.splitlines()
    assert len(out) == depth + 2
    assert out[-1] == "  " * (depth + 1) + "• bottom"
    assert _run("validate", path) == (0, f"{path}: {2 * depth + 1} events, 0 problems\n", "")


def test_broken_pipe_exits_quietly(tmp_path):
    path = _write(tmp_path, "big.jsonl", _trace(5000))  # ~250 kB of summary: more than a pipe
    proc = subprocess.Popen([sys.executable, "-m", "nemoflow", "summary", path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().startswith(b"10003 events")
        proc.stdout.close()  # what ``| head -1`` does
        err = proc.stderr.read()
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    assert (code, err) == (141, b"")


def test_reading_is_line_by_line(tmp_path):
    good = _trace().splitlines(keepends=True)
    # the first event arrives before the bad line after it is read
    path = _write(tmp_path, "t.jsonl", good[0] + b"garbage\n")
    events = cli.iter_events(path)
    assert next(events)["name"] == "agent"
    with pytest.raises(cli.TraceError, match=r"t\.jsonl:2: invalid JSON"):
        next(events)
    # validating a 20,000-event file keeps only the open scopes in memory
    path = _write(tmp_path, "big.jsonl", _trace(10000))
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        with open(os.devnull, "w") as null:
            assert cli._validate_file(path, null) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 4_000_000
    assert peak < 1_000_000, peak


_MUTATED_LINES = st.lists(
    st.sampled_from(_trace().splitlines(keepends=True)).flatmap(
        lambda line: st.tuples(st.just(line), st.integers(0, len(line)), st.binary(max_size=8))
    ).map(lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):]),
    max_size=8,
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300), _MUTATED_LINES.map(b"".join)),
       compress=st.booleans())
def test_any_bytes_give_a_result_or_one_line(tmp_path, capsys, data, compress):
    path = _write(tmp_path, "f.jsonl", gzip.compress(data) if compress else data)
    for args in (["summary", path], ["validate", path], ["convert", path, "--to", "atif"]):
        code = cli.main(args)
        err = capsys.readouterr().err
        assert code in (0, 1)
        assert "cannot read (" not in err  # the catch-all for what the reader did not foresee
        # validate reports bad lines on stdout: stderr only for a file it cannot read at all
        assert err.count("\n") == code if args[0] != "validate" else err.count("\n") <= code
