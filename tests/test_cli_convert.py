"""``nemoflow convert`` to Chrome, OTLP/JSON and an OTLP collector: the same output as the live
exporters given the same run, strict OTLP/JSON, parents kept, one line on bad input."""

from __future__ import annotations

import base64
import importlib
import json
import os
import subprocess
import sys

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_format = pytest.importorskip("google.protobuf.json_format")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest as Request,
)
from otlp_collector import Collector  # noqa: E402


def _env(nf):
    env = dict(os.environ)
    env.pop("NEMOFLOW_NO_EXTENSIONS", None)
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    return env


def _command(nf, *args, stdin=None, timeout=30):
    proc = subprocess.run([sys.executable, "-m", "nemoflow", *args], input=stdin,
                          capture_output=True, timeout=timeout, check=False, env=_env(nf))
    return proc.returncode, proc.stdout, proc.stderr.decode()


def _record(nf, tmp_path, projection="full"):
    """One run recorded three ways at once: ATOF JSONL, a live Chrome trace, live OTLP/JSON."""
    from nemoflow.exporters.chrome import ChromeTraceExporter

    jsonl = nf.AtofExporter(nf.AtofExporterConfig(str(tmp_path), "run.jsonl"))
    jsonl.register("jsonl")
    chrome = ChromeTraceExporter(tmp_path / "live.json", process_name="p")
    chrome.register("chrome")
    otlp = nf.OpenTelemetrySubscriber(nf.OpenTelemetryConfig(
        projection, transport="otlp_json_file", output_directory=str(tmp_path),
        filename="live.otlp.jsonl"))
    otlp.register("otlp")

    @nf.trace.tool
    def search(query: str) -> list:
        return [query, "more"]

    @nf.trace.llm(model="gpt-test")
    def chat(messages):
        return {"model": "gpt-test", "choices": [{"message": {"role": "assistant",
                                                              "content": "hi"}}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3}}

    with nf.trace.agent("agent", input={"goal": "x"}):
        search("q")
        chat([{"role": "user", "content": "hello"}])
        nf.mark("step", data={"n": 1})
        with nf.trace("inner"):
            nf.mark("deep")
        try:
            with nf.trace("fails"):
                raise ValueError("no luck")
        except ValueError:
            pass
    nf.subscribers.flush()
    for exporter in (jsonl, chrome, otlp):
        exporter.shutdown()
    return str(tmp_path / "run.jsonl")


def _cli(nf):
    return importlib.import_module("nemoflow.cli")  # the package instance of this backend


def _without_pid(trace):
    out = []
    for ev in trace["traceEvents"]:
        if ev["ph"] == "M":
            continue
        ev = dict(ev)
        ev.pop("pid")
        out.append(ev)
    return sorted(out, key=lambda e: (e["ts"], e["name"], e["ph"]))


def test_chrome_is_what_the_live_exporter_writes(nf, tmp_path, capsys):
    from nemoflow.exporters.chrome import validate_chrome_trace

    path = _record(nf, tmp_path)
    out = tmp_path / "converted.json"
    assert _cli(nf).main(["convert", path, "--to", "chrome", "-o", str(out)]) == 0
    assert capsys.readouterr().err == f"nemoflow: {out}: 5 scopes, 2 marks\n"
    live = json.loads((tmp_path / "live.json").read_bytes())
    converted = json.loads(out.read_bytes())
    assert validate_chrome_trace(converted) == []
    assert _without_pid(converted) == _without_pid(live)
    assert converted["otherData"]["time_origin_ns"] == live["otherData"]["time_origin_ns"]
    names = {e["args"]["name"] for e in converted["traceEvents"]
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"nemoflow run.jsonl"}


def _spans(lines):
    return {s["spanId"]: s for line in lines for rs in orjson.loads(line)["resourceSpans"]
            for ss in rs["scopeSpans"] for s in ss["spans"]}


def _hex_to_b64(obj):
    if isinstance(obj, dict):
        return {k: base64.b64encode(bytes.fromhex(v)).decode()
                if k in ("traceId", "spanId", "parentSpanId") else _hex_to_b64(v)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hex_to_b64(v) for v in obj]
    return obj


@pytest.mark.parametrize("projection", ["full", "gen_ai", "openinference"])
def test_otlp_json_is_what_the_live_exporter_writes(nf, tmp_path, capsys, projection):
    path = _record(nf, tmp_path, projection)
    out = tmp_path / "converted.otlp.jsonl"
    assert _cli(nf).main(["convert", path, "--to", "otlp", "--projection", projection,
                          "-o", str(out)]) == 0
    assert capsys.readouterr().err == f"nemoflow: {out}: 5 spans\n"
    lines = out.read_bytes().splitlines()
    live = (tmp_path / "live.otlp.jsonl").read_bytes().splitlines()
    assert _spans(lines) == _spans(live)
    for line in lines:  # strict proto3 JSON once the ids are in its base64 spelling
        message = json_format.Parse(orjson.dumps(_hex_to_b64(orjson.loads(line))), Request())
        assert len(message.resource_spans[0].scope_spans[0].spans) == 5


def test_convert_to_stdout_and_from_stdin(nf, tmp_path):
    from nemoflow.exporters.chrome import validate_chrome_trace

    with open(_record(nf, tmp_path), "rb") as f:
        data = f.read()
    code, out, err = _command(nf, "convert", "-", "--to", "chrome", stdin=data)
    assert (code, err) == (0, "")
    assert validate_chrome_trace(json.loads(out)) == []
    code, out, err = _command(nf, "convert", "-", "--to", "otlp", stdin=data)
    assert (code, err) == (0, "")
    assert len(_spans(out.splitlines())) == 5
    bad = data.replace(b'"uuid":"', b'"uuid":"zz', 1)  # a string, but not a uuid
    code, out, err = _command(nf, "convert", "-", "--to", "otlp", stdin=bad)
    assert (code, out) == (1, b"")
    assert err.startswith("nemoflow: error: <stdin>: cannot convert (ValueError: ")
    assert os.listdir(tmp_path) == sorted(os.listdir(tmp_path))  # nothing left behind
    assert not [n for n in os.listdir(tmp_path) if n.startswith("nemoflow-convert")]


def test_send_to_a_collector_keeps_every_parent(nf, tmp_path):
    path = _record(nf, tmp_path)
    with open(path, "rb") as f:
        events = [orjson.loads(line) for line in f]
    starts = {e["uuid"]: e for e in events if e.get("scope_category") == "start"}
    collector = Collector()
    try:
        code, _out, err = _command(nf, "convert", path, "--send", collector.url,
                                   "--projection", "gen_ai", "--service-name", "svc",
                                   "--header", "x-team=blue")
        assert code == 0, err
        assert err == f"nemoflow: {collector.url}: 5 spans sent\n"
        spans = collector.spans()
        headers = collector.requests[0][1]
        resource = collector.resource_spans()[0].resource
    finally:
        collector.close()
    assert headers["x-team"] == "blue"
    assert {a.key: a.value.string_value for a in resource.attributes}["service.name"] == "svc"
    span_of = {bytes.fromhex(u.replace("-", ""))[8:]: u for u in starts}
    assert sorted(span_of[s.span_id] for s in spans) == sorted(starts)
    by_id = {s.span_id: s for s in spans}
    for span in spans:
        parent = starts[span_of[span.span_id]]["parent_uuid"]
        if parent in starts:
            assert span_of[span.parent_span_id] == parent
            assert span.trace_id == by_id[span.parent_span_id].trace_id
        else:
            assert span.parent_span_id == b""
    assert any(a.key.startswith("gen_ai.") for s in spans for a in s.attributes)


def test_send_failures_are_one_line(nf, tmp_path):
    path = _record(nf, tmp_path)
    collector = Collector()
    collector.script = [(400, {})]
    try:
        code, _out, err = _command(nf, "convert", path, "--send", collector.url)
    finally:
        collector.close()
    assert code == 1
    assert err.startswith(f"nemoflow: error: {collector.url}: ") and "400" in err
    assert "Traceback" not in err
    # nothing listens there any more
    code, _out, err = _command(nf, "convert", path, "--send", collector.url, "--timeout", "1")
    assert code == 1 and err.startswith(f"nemoflow: error: {collector.url}: "), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_scopes_left_open_in_the_file(nf, tmp_path, capsys):
    path = _record(nf, tmp_path)
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    agent_end = next(i for i, line in enumerate(lines)
                     if b'"end"' in line and b'"name":"agent"' in line)
    del lines[agent_end]
    cut = tmp_path / "open.jsonl"
    cut.write_bytes(b"".join(lines))
    cli = _cli(nf)
    assert cli.main(["convert", str(cut), "--to", "chrome", "-o", str(tmp_path / "o.json")]) == 0
    assert capsys.readouterr().err.endswith(
        "o.json: 5 scopes, 2 marks; 1 scopes without an end, drawn as open\n")
    trace = json.loads((tmp_path / "o.json").read_bytes())
    agent = next(e for e in trace["traceEvents"] if e.get("name") == "agent")
    last = max(e["ts"] + e.get("dur", 0) for e in trace["traceEvents"] if "ts" in e)
    assert agent["args"]["open"] is True
    assert agent["ts"] + agent["dur"] == pytest.approx(last, abs=1e-6)  # the last event, not now
    assert cli.main(["convert", str(cut), "--to", "otlp", "-o", str(tmp_path / "o.jsonl")]) == 0
    assert capsys.readouterr().err.endswith(
        "o.jsonl: 4 spans; 1 scopes without an end, not exported\n")


@pytest.mark.parametrize("args, message", [
    (["--to", "chrome"], "nemoflow: error: {}:2: invalid JSON"),
    (["--to", "otlp"], "nemoflow: error: {}:2: invalid JSON"),
    (["--send", "http://127.0.0.1:9"], "nemoflow: error: {}:2: invalid JSON"),
])
def test_bad_input_is_one_line_and_writes_nothing(nf, tmp_path, args, message):
    bad = tmp_path / "bad.jsonl"
    path = _record(nf, tmp_path)
    with open(path, "rb") as f:
        first = f.readline()
    bad.write_bytes(first + b"{not json\n")
    out = tmp_path / "out"
    extra = [] if "--send" in args else ["-o", str(out)]
    code, _out, err = _command(nf, "convert", str(bad), *args, *extra)
    assert code == 1
    assert err.startswith(message.format(bad)) and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    ([], "give the output format"),
    (["--to", "chrome", "--send", "http://x"], "does not go with --to chrome"),
    (["--send", "http://x", "-o", "f"], "does not go with -o"),
    (["--send", "http://x", "--header", "novalue"], "is not NAME=VALUE"),
    (["--to", "otlp", "--projection", "zipkin"], "invalid choice"),
    (["--send", "http://x", "--timeout", "0"], "--timeout must be"),
])
def test_usage_errors(nf, tmp_path, args, message):
    code, _out, err = _command(nf, "convert", "t.jsonl", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_unwritable_output(nf, tmp_path):
    path = _record(nf, tmp_path)
    for to in ("chrome", "otlp"):
        code, _out, err = _command(nf, "convert", path, "--to", to, "-o", str(tmp_path))
        assert code == 1 and err.startswith(f"nemoflow: error: {tmp_path}: cannot write"), err
        assert len(err.splitlines()) == 1


_SCALAR = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
           | st.floats(allow_nan=False))
_JSON = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_events_never_end_in_a_traceback(nf, tmp_path_factory, data):
    """Any field of any event replaced by any JSON value: status 0 or 1, one line on error."""
    import contextlib
    import io

    cli = _cli(nf)
    events = [
        {"atof_version": "0.1", "attributes": [], "category": "agent", "category_profile": None,
         "data": None, "data_schema": None, "kind": "scope", "metadata": None, "name": "a",
         "parent_uuid": "00000000-0000-7000-8000-000000000000", "scope_category": "start",
         "timestamp": "2026-01-01T00:00:00.000001+00:00",
         "uuid": "00000000-0000-7000-8000-000000000001"},
        {"atof_version": "0.1", "category": None, "category_profile": None, "data": {"x": 1},
         "data_schema": None, "kind": "mark", "metadata": None, "name": "m",
         "parent_uuid": "00000000-0000-7000-8000-000000000001",
         "timestamp": "2026-01-01T00:00:00.000002+00:00",
         "uuid": "00000000-0000-7000-8000-000000000002"},
    ]
    events.append({**events[0], "scope_category": "end", "data": {"ok": True},
                   "metadata": {"otel.status_code": "OK"},
                   "timestamp": "2026-01-01T00:00:00.000003+00:00"})
    i = data.draw(st.integers(0, len(events) - 1))
    key = data.draw(st.sampled_from(sorted(events[i])))
    events[i] = {**events[i], key: data.draw(_JSON)}
    directory = tmp_path_factory.mktemp("fuzz")
    path = directory / "t.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    for to in ("chrome", "otlp"):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["convert", str(path), "--to", to, "-o", str(directory / to)])
        assert code in (0, 1)
        if code == 1:
            assert err.getvalue().startswith(f"nemoflow: error: {path}")
            assert len(err.getvalue().splitlines()) == 1
