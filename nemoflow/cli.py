"""The ``nemoflow`` command: read ATOF JSONL files.

    nemoflow summary TRACE.jsonl    the scope tree with durations, status and marks
    nemoflow summary --stats TRACE...   latency, error and token statistics per scope name
    nemoflow validate TRACE.jsonl   check every line against the ATOF 0.1 envelope
    nemoflow convert TRACE.jsonl --to atif|chrome|otlp [-o OUT]   ATIF, Chrome trace, OTLP/JSON
    nemoflow convert TRACE.jsonl --send URL   the spans to an OTLP/HTTP collector
    nemoflow report TRACE... -o report.html   a self-contained HTML report
    nemoflow run [options] script.py [args]   run a program traced (also -m module)

``-`` reads standard input; gzip-compressed input (``.jsonl.gz``) is read transparently. A file
that cannot be read ends the command with one line on stderr naming the file and line.
"""

from __future__ import annotations

import argparse
import functools
import glob
import gzip
import os
import re
import sys
import warnings
import zlib
from datetime import datetime

import orjson

_SCOPE_KEYS = frozenset({"atof_version", "attributes", "category", "category_profile", "data",
                         "data_schema", "kind", "metadata", "name", "parent_uuid",
                         "scope_category", "timestamp", "uuid"})
_MARK_KEYS = _SCOPE_KEYS - {"attributes", "scope_category"}
# What the tree and the conversion read from each event.
_NEEDED_MARK = ("data", "name", "parent_uuid", "timestamp", "uuid")
_NEEDED_SCOPE = (*_NEEDED_MARK, "category", "metadata", "scope_category")


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file and, when known, the line."""


def _display(path: str) -> str:
    return "<stdin>" if path == "-" else path


def _open(path: str):
    """A binary stream of the file's bytes, decompressed when it is gzip (by content)."""
    name = _display(path)
    if path == "-":
        raw = sys.stdin.buffer
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            raise TraceError(f"{name}: no such file") from None
        except IsADirectoryError:
            raise TraceError(f"{name}: is a directory, not a trace file") from None
        except PermissionError:
            raise TraceError(f"{name}: permission denied") from None
        except OSError as exc:
            raise TraceError(f"{name}: cannot open ({exc.strerror or exc})") from None
    try:
        magic = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    except OSError as exc:
        if raw is not sys.stdin.buffer:
            raw.close()
        if isinstance(exc, IsADirectoryError):
            raise TraceError(f"{name}: is a directory, not a trace file") from None
        raise TraceError(f"{name}: cannot read ({exc.strerror or exc})") from None
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def _json_problem(line: bytes, exc: Exception) -> str:
    text = str(exc)
    where = text.find(": line ")  # orjson's position is within the line: keep the column only
    if where >= 0:
        col = text.find("column ", where)
        text = text[:where] + (f", {text[col:].split(' (')[0]}" if col >= 0 else "")
    if not line.endswith(b"\n"):
        return f"truncated line, no newline at the end of the file (invalid JSON: {text})"
    return f"invalid JSON ({text})"


def _foreign(value) -> str | None:
    """What a JSON value that is not an ATOF event looks like, when it is a known format."""
    if isinstance(value, dict):
        if "traceEvents" in value:
            return "a Chrome trace (JSON), not ATOF JSONL"
        for key in ("resourceSpans", "resourceLogs", "resourceMetrics"):
            if key in value:
                return "an OTLP/JSON export, not ATOF JSONL"
        if "steps" in value and "schema_version" in value:
            return "an ATIF trajectory, not ATOF JSONL"
        return None
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and "ph" in v for v in value):
            return "a Chrome trace (JSON array), not ATOF JSONL"
        return "a JSON array, not ATOF JSONL (one event object per line)"
    return None


def _event_problem(ev) -> str | None:
    """Why a parsed line is not an ATOF event the tree can show (None when it is)."""
    if not isinstance(ev, dict):
        return _foreign(ev) or f"not an ATOF event (a JSON {type(ev).__name__}, not an object)"
    kind = ev.get("kind")
    if kind not in ("scope", "mark"):
        foreign = _foreign(ev)
        if foreign is not None:
            return foreign
        if "kind" not in ev:
            return 'not an ATOF event (no "kind" field)'
        return f"unknown kind {kind!r}"
    missing = [k for k in (_NEEDED_SCOPE if kind == "scope" else _NEEDED_MARK) if k not in ev]
    if missing:
        return f"{kind} event without {', '.join(missing)}"
    if not isinstance(ev["uuid"], str):
        return f"uuid {ev['uuid']!r} is not a string"
    if ev["parent_uuid"] is not None and not isinstance(ev["parent_uuid"], str):
        return f"parent_uuid {ev['parent_uuid']!r} is not a string or null"
    if kind == "scope" and ev["scope_category"] not in ("start", "end"):
        return f"scope_category {ev['scope_category']!r}"
    try:
        _ts(ev["timestamp"])
    except (TypeError, ValueError, AttributeError, OverflowError, OSError):
        return f"timestamp {ev['timestamp']!r} is not RFC 3339 or epoch microseconds"
    return None


def _lines(path: str, allow_empty: bool = False, on_read=None):
    """(line number, bytes) of every non-blank line, read one at a time; ``on_read(n)`` is
    told of the bytes read, about every megabyte."""
    name = _display(path)
    stream, raw = _open(path)
    lineno = 0
    seen = False
    pending = 0
    try:
        while True:
            try:
                line = stream.readline()
            except (OSError, EOFError, zlib.error) as exc:
                raise TraceError(f"{name}:{lineno + 1}: corrupt or truncated gzip data "
                                 f"({exc})") from None
            if not line:
                break
            if on_read is not None:
                pending += len(line)
                if pending >= 1 << 20:
                    on_read(pending)
                    pending = 0
            lineno += 1
            if not line.strip():
                continue
            seen = True
            yield lineno, line
    finally:
        if pending:
            on_read(pending)
        if stream is not raw:
            stream.close()
        if raw is not sys.stdin.buffer:
            raw.close()
    if not seen and not allow_empty:
        raise TraceError(f"{name}: empty, no ATOF events")


def _records(path: str, allow_empty: bool = False, on_read=None):
    """(line number, parsed value or None, problem or None) of every non-blank line."""
    name = _display(path)
    first = True
    for lineno, line in _lines(path, allow_empty, on_read):
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            if first:
                head = line.strip()
                if b'"traceEvents"' in head[:200]:
                    raise TraceError(f"{name}:{lineno}: a Chrome trace (JSON), not ATOF "
                                     "JSONL") from None
                if head in (b"{", b"["):
                    raise TraceError(f"{name}:{lineno}: a multi-line JSON document (a Chrome "
                                     "trace, an ATIF file?), not ATOF JSONL (one event object "
                                     "per line)") from None
            first = False
            yield lineno, None, _json_problem(line, exc)
            continue
        if first:
            first = False
            if not (isinstance(value, dict) and "kind" in value):
                foreign = _foreign(value)
                if foreign is not None:  # the whole file is in another format: stop here
                    raise TraceError(f"{name}:{lineno}: {foreign}")
        yield lineno, value, None


def iter_events(path: str, allow_empty: bool = False, on_read=None):
    """The events of an ATOF JSONL file (``-``: stdin; gzip read transparently), one at a time.

    Raises ``TraceError`` (a ``ValueError``) naming the file and line at the first line that is
    not an ATOF event. ``on_read(n)``, when given, is told of the bytes read as they are.
    """
    name = _display(path)
    for lineno, ev, problem in _records(path, allow_empty, on_read):
        if problem is None:
            problem = _event_problem(ev)
        if problem is not None:
            raise TraceError(f"{name}:{lineno}: {problem}")
        yield ev


def read_events(path: str) -> list:
    """The events of an ATOF JSONL file, as dicts, in file order."""
    return list(iter_events(path, allow_empty=True))


def _ts(value) -> float:
    """Seconds since the epoch of an ATOF timestamp (RFC 3339 or integer epoch µs)."""
    return _ts_ns(value) / 1e9


_RFC3339 = re.compile(r"([^.]*)(?:\.(\d*))?(.*)\Z", re.S)


@functools.lru_cache(maxsize=4096)
def _epoch_s(text: str) -> int:
    # Events of a trace share their date, hour and zone: parse each second once.
    return int(datetime.fromisoformat(text).timestamp())


def _ts_ns(value) -> int:
    """Exact nanoseconds since the epoch of an ATOF timestamp (RFC 3339 or integer epoch µs)."""
    if isinstance(value, int):
        return value * 1000
    match = _RFC3339.match(value)
    if match is None:
        raise ValueError(f"not a timestamp: {value!r}")
    head, digits, tz = match.groups()
    # datetime keeps µs only: the nanosecond digits are carried separately
    frac_ns = int(digits.ljust(9, "0")[:9]) if digits else 0
    return _epoch_s((head + tz).replace("Z", "+00:00")) * 1_000_000_000 + frac_ns


class _Validator:
    """Checks events one at a time, keeping only the scopes still open."""

    def __init__(self):
        self.open_scopes: dict = {}

    def check(self, ev, line) -> list:
        """The problems of one event (``line`` is where it is, kept for unclosed scopes)."""
        if not isinstance(ev, dict):
            return [_event_problem(ev)]
        kind = ev.get("kind")
        expected = _SCOPE_KEYS if kind == "scope" else _MARK_KEYS if kind == "mark" else None
        if expected is None:
            return [_foreign(ev) or f"unknown kind {kind!r}"]
        if set(ev) != expected:
            return [f"fields {sorted(set(ev) ^ expected)} missing or extra"]
        problems = []
        if ev["atof_version"] != "0.1":
            problems.append(f"atof_version {ev['atof_version']!r}")
        basic = _event_problem(ev)
        if basic is not None:
            problems.append(basic)
            return problems
        if kind == "scope":
            # other writers' categories are kept (ATOF): only the type is checked
            if not isinstance(ev["category"], str):
                problems.append(f"category {ev['category']!r} is not a string")
            if ev["scope_category"] == "start":
                self.open_scopes[ev["uuid"]] = (ev["name"], line)
            elif self.open_scopes.pop(ev["uuid"], None) is None:
                problems.append(f"end of {ev['uuid']} without a start")
        return problems

    def finish(self) -> list:
        """(line, problem) for every scope that was started and never ended."""
        return [(line, f"scope {name!r} ({uuid}) has no end event")
                for uuid, (name, line) in self.open_scopes.items()]


def validate(events: list) -> list:
    """Problems found in a list of event dicts (empty when the stream is valid ATOF 0.1)."""
    checker = _Validator()
    problems = [f"line {i}: {problem}"
                for i, ev in enumerate(events, 1) for problem in checker.check(ev, i)]
    # Implicit roots are never written: a parent that is not in the file must be a root, i.e.
    # never itself have a parent in the file. Anything else is a dangling link.
    return problems + [problem for _, problem in checker.finish()]


def _validate_file(path: str, out) -> int:
    """Print every problem of a trace file as ``file:line: reason``, then the count."""
    name = _display(path)
    checker = _Validator()
    events = problems = 0
    try:
        for lineno, ev, problem in _records(path):
            events += 1
            found = [problem] if problem is not None else checker.check(ev, lineno)
            for text in found:
                problems += 1
                out.write(f"{name}:{lineno}: {text}\n")
    except TraceError as exc:
        out.flush()
        print(f"nemoflow: error: {exc}", file=sys.stderr)
        return 1
    for lineno, text in checker.finish():
        problems += 1
        out.write(f"{name}:{lineno}: {text}\n")
    out.write(f"{name}: {events} events, {problems} problems\n")
    return 1 if problems else 0


_STATUS_KEYS = ("otel.status_code", "otel.status_description")


def _slim(ev: dict) -> dict:
    """What the tree shows of an event: payloads of scopes are not kept for a large file."""
    if ev["kind"] == "mark":
        return {k: ev[k] for k in (*_NEEDED_MARK, "kind")}
    out = {k: ev[k] for k in ("category", "kind", "name", "parent_uuid", "scope_category",
                              "timestamp", "uuid")}
    meta = ev["metadata"]
    out["metadata"] = ({k: meta[k] for k in _STATUS_KEYS if k in meta}
                       if isinstance(meta, dict) else meta)
    return out


def summary(events) -> str:
    """A readable tree of the scopes (with durations and status) and marks of a trace."""
    events = list(events)
    starts: dict = {}
    ends: dict = {}
    children: dict = {}
    roots: list = []
    for ev in events:
        if ev["kind"] == "scope" and ev["scope_category"] == "start":
            starts[ev["uuid"]] = ev
        elif ev["kind"] == "scope":
            ends[ev["uuid"]] = ev
    known = set(starts)
    order = []
    for ev in events:
        if ev["kind"] == "scope" and ev["scope_category"] == "end":
            continue
        key = ev["uuid"]
        order.append(key)
        parent = ev["parent_uuid"]
        if parent in known:
            children.setdefault(parent, []).append(ev)
        else:
            roots.append(ev)

    lines = []
    traces = len({ev["parent_uuid"] for ev in roots})
    n_scopes, n_marks = len(starts), sum(1 for ev in events if ev["kind"] == "mark")
    errors = sum(1 for ev in ends.values()
                 if isinstance(ev["metadata"], dict)
                 and ev["metadata"].get("otel.status_code") == "ERROR")
    lines.append(f"{len(events)} events: {n_scopes} scopes, {n_marks} marks, {errors} errors, "
                 f"{traces} trace(s)")

    def describe(ev, depth):
        pad = "  " * depth
        if ev["kind"] == "mark":
            data = "" if ev["data"] is None else " " + orjson.dumps(ev["data"]).decode()
            return f"{pad}• {ev['name']}{data}"
        end = ends.get(ev["uuid"])
        if end is None:
            took, status = "   (open)", ""
        else:
            took = f"{(_ts(end['timestamp']) - _ts(ev['timestamp'])) * 1e3:8.3f} ms"
            meta = end["metadata"] if isinstance(end["metadata"], dict) else {}
            status = meta.get("otel.status_code", "")
            if status == "ERROR":
                status += f": {meta.get('otel.status_description', '')}"
        return f"{pad}{ev['name']} [{ev['category']}] {took} {status}".rstrip()

    def walk(root):
        # Depth first with an explicit stack: a trace may nest deeper than Python recurses.
        stack = [(root, 1)]
        while stack:
            ev, depth = stack.pop()
            lines.append(describe(ev, depth))
            if ev["kind"] != "mark":
                kids = children.get(ev["uuid"], ())
                stack.extend((child, depth + 1) for child in reversed(kids))

    # The file is in emission order per thread: order siblings by their start instead.
    def started(ev):
        return _ts(ev["timestamp"])

    roots.sort(key=started)
    for kids in children.values():
        kids.sort(key=started)
    for ev in roots:
        walk(ev)
    return "\n".join(lines)


def to_atif(events: list, session_id: str | None = None, agent_name: str | None = None,
            agent_version: str = "0") -> str:
    """The ATIF trajectory of a recorded run, as ``AtifExporter.export_json()`` writes it.

    Without ``session_id``, the uuid of the single top-level agent scope (else ``"session"``);
    without ``agent_name``, that agent's name (else ``"nemoflow"``).
    """
    from .exporters._atif_convert import agent_info, dumps, events_to_trajectory

    starts = {ev.get("uuid") for ev in events
              if ev.get("kind") == "scope" and ev.get("scope_category") == "start"}
    tops = [ev for ev in events if ev.get("kind") == "scope" and ev.get("category") == "agent"
            and ev.get("scope_category") == "start" and ev.get("parent_uuid") not in starts]
    top = tops[0] if len(tops) == 1 else None
    if session_id is None:
        session_id = top["uuid"] if top is not None else "session"
    if agent_name is None:
        agent_name = top["name"] if top is not None else "nemoflow"
    return dumps(events_to_trajectory(events, session_id, agent_info(agent_name, agent_version)))


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("nemoflow")
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    from . import __version__
    return __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemoflow", description="Read ATOF JSONL traces, convert them, run programs "
        "traced.",
        epilog="TRACE is a file, a gzip-compressed file (.jsonl.gz) or - for standard input. "
               "Exit status: 0 success, 1 unreadable or invalid input, 2 usage error.")
    parser.add_argument("--version", action="version", version=f"nemoflow {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from ._cli_stats import SORT_KEYS

    text = "print the scope tree, or statistics per scope type and name"
    p = sub.add_parser("summary", help=text, description=text + ". One trace file: the tree; "
                       "several files (or globs), --stats, --json or --sort: the statistics "
                       "over all of them.")
    p.add_argument("paths", nargs="+", metavar="TRACE",
                   help="ATOF JSONL files or glob patterns (- for stdin)")
    p.add_argument("--stats", action="store_true",
                   help="count, errors, total and self time, p50/p90/p99/max latency, tokens "
                   "per LLM model, time to first chunk")
    p.add_argument("--sort", choices=SORT_KEYS, default=None,
                   help="order of the statistics rows, largest first (default: total)")
    p.add_argument("--json", action="store_true", help="the statistics as JSON")
    p.add_argument("--progress", action="store_true",
                   help="show a progress bar on stderr (shown anyway for inputs of 1 GB or "
                   "more when stderr is a terminal)")
    text = "check the format"
    p = sub.add_parser("validate", help=text, description=text)
    p.add_argument("path", metavar="TRACE", help="an ATOF JSONL file (- for stdin)")
    text = "convert a trace to another format, or send it to an OpenTelemetry collector"
    p = sub.add_parser("convert", help=text, description=text + ", with the exporters' own "
                       "code: what they would have written had they been attached to the run.")
    p.add_argument("path", metavar="TRACE", help="an ATOF JSONL file (- for stdin)")
    p.add_argument("--to", choices=["atif", "chrome", "otlp"],
                   help="the output format: an ATIF trajectory, a Chrome/Perfetto trace, "
                   "OTLP/JSON lines")
    p.add_argument("-o", "--output", default="-", help="output file (default: standard output)")
    p.add_argument("--send", metavar="URL", help="send the spans to an OTLP/HTTP collector "
                   "(e.g. http://127.0.0.1:4318) instead of writing them")
    p.add_argument("--projection", choices=["full", "gen_ai", "openinference"], default="full",
                   help="OTLP: the span attributes (default: full, every ATOF field)")
    p.add_argument("--service-name", help="OTLP: the resource's service.name")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="--send: an HTTP header of every request (repeatable)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="--send: how long to keep trying (default: 10)")
    p.add_argument("--session-id", help="trajectory session id (default: the top-level agent "
                   "scope's uuid)")
    p.add_argument("--agent-name", help="agent name (default: the top-level agent's name)")
    p.add_argument("--agent-version", default="0", help="agent version (default: 0)")
    from .report import add_parser as add_report_parser

    add_report_parser(sub)
    text = "run a Python program traced (nemoflow run -h for its options)"
    sub.add_parser("run", help=text, add_help=False,
                   usage="nemoflow run [options] script.py [args ...] | -m module [args ...]")
    return parser


def _run(args) -> int:
    if args.command == "validate":
        return _validate_file(args.path, sys.stdout)
    if args.command == "report":
        from .report import run as report

        return report(args)
    if args.command == "convert":
        return _convert(args)
    paths = _expand(args.paths)
    progress = _progress(paths, args.progress)
    on_read = progress.advance if progress is not None else None
    tree = None
    try:
        if len(paths) == 1 and not (args.stats or args.json or args.sort):
            tree = summary(_slim(ev) for ev in iter_events(paths[0], on_read=on_read))
        else:
            result = _stats(paths, on_read, args.sort or "total")
    finally:
        if progress is not None:
            progress.close()
    if tree is not None:
        print(tree)
    elif args.json:
        result["files"] = [_display(p) for p in paths]
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        from ._cli_stats import render

        render(result, len(paths))
    return 0


def _convert(args) -> int:
    to = args.to or "otlp"
    if to == "atif":
        events = list(iter_events(args.path))
        text = to_atif(events, args.session_id, args.agent_name, args.agent_version)
        if args.output == "-":
            sys.stdout.write(text + "\n")
        else:
            try:
                with open(args.output, "w", encoding="utf-8") as f:
                    f.write(text + "\n")
            except OSError as exc:
                raise TraceError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
        return 0
    from . import _cli_convert as conv

    events = [conv.FileEvent(ev, _ts_ns(ev["timestamp"])) for ev in iter_events(args.path)]
    starts = {ev.uuid for ev in events if ev.kind == "scope" and ev.scope_category == "start"}
    unended = len(starts - {ev.uuid for ev in events
                            if ev.kind == "scope" and ev.scope_category == "end"})
    output = args.output
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if to == "chrome":
                conv.to_chrome(events, args.output,
                               f"nemoflow {os.path.basename(_display(args.path))}")
                note = (f"{len(starts)} scopes, "
                        f"{sum(1 for ev in events if ev.kind == 'mark')} marks")
            elif args.send:
                headers = dict(h.split("=", 1) for h in args.header)
                output = args.send
                stats = conv.send_otlp(events, args.send, args.projection, args.service_name,
                                       headers, args.timeout)
                note = f"{stats['spans_exported']} spans sent"
            else:
                stats = conv.to_otlp_json(events, args.output, args.projection,
                                          args.service_name, args.timeout)
                note = f"{stats['spans_exported']} spans"
    except conv.WriteError as exc:  # the exporter's warning about it is this error
        raise TraceError(str(exc)) from None
    except Exception as exc:  # an event the exporter cannot take (say, a uuid that is not one)
        raise TraceError(f"{_display(args.path)}: cannot convert ({type(exc).__name__}: "
                         f"{exc})") from None
    for text in dict.fromkeys(str(w.message) for w in caught):
        print(text if text.startswith("nemoflow") else f"nemoflow: warning: {text}",
              file=sys.stderr)
    if unended:
        note += (f"; {unended} scopes without an end, "
                 + ("drawn as open" if to == "chrome" else "not exported"))
    if args.output != "-" or args.send:
        print(f"nemoflow: {output}: {note}", file=sys.stderr)
    return 0


_GB = 1 << 30


def _expand(patterns) -> list:
    """The files named, glob patterns expanded (sorted); a pattern matching nothing is an error."""
    paths = []
    for pattern in patterns:
        if pattern == "-" or os.path.exists(pattern) or not glob.has_magic(pattern):
            paths.append(pattern)
            continue
        found = sorted(glob.glob(pattern))
        if not found:
            raise TraceError(f"{pattern}: no file matches")
        paths.extend(found)
    return paths


def _size(path: str) -> int | None:
    """The bytes the reader will see, when known (not for stdin or compressed files)."""
    if path == "-":
        return None
    try:
        with open(path, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                return None
        return os.path.getsize(path)
    except OSError:
        return None


def _progress(paths: list, asked: bool):
    """A progress bar on stderr when asked, or for 1 GB or more of input on a terminal."""
    sizes = [_size(p) for p in paths]
    known = sum(s for s in sizes if s is not None)
    if not (asked or (known >= _GB and sys.stderr.isatty())):
        return None
    from ._cli_stats import Progress

    return Progress(None if None in sizes else known)


def _stats(paths: list, on_read, sort: str) -> dict:
    """The statistics over the events of every file, read one event at a time."""
    from ._cli_stats import Stats

    stats = Stats(_ts_ns)
    add = stats.add
    for path in paths:
        for ev in iter_events(path, on_read=on_read):
            add(ev)
    return stats.result(sort)


def _check_convert(parser, args) -> None:
    if args.to is None and args.send is None:
        parser.error("convert: give the output format (--to atif|chrome|otlp) or --send URL")
    if args.send is not None:
        if args.to not in (None, "otlp"):
            parser.error(f"convert: --send sends OTLP spans; it does not go with --to {args.to}")
        if args.output != "-":
            parser.error("convert: --send sends the spans instead of writing them; it does not "
                         "go with -o")
    for header in args.header:
        if "=" not in header or not header.split("=", 1)[0].strip():
            parser.error(f"convert: --header {header!r} is not NAME=VALUE")
    if not 0 < args.timeout <= 86400:
        parser.error("convert: --timeout must be more than 0 and at most 86400 seconds")


def main(argv=None) -> int:
    """Run the ``nemoflow`` command; the exit status."""
    parser = _parser()
    if argv is None:
        argv = sys.argv[1:]
    if not argv:  # a bare ``nemoflow``: the help, as a usage error (exit 2)
        parser.print_help(sys.stderr)
        return 2
    if argv[0] == "run":  # everything after the program's name is the program's
        from ._cli_run import main as run

        return run(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "convert":
        _check_convert(parser, args)
    try:
        code = _run(args)
        sys.stdout.flush()
        return code
    except TraceError as exc:
        print(f"nemoflow: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``nemoflow summary big.jsonl | head``): stop quietly, and keep
        # the interpreter's final flush from failing on the closed pipe.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a trace this reader does not expect: one line, not a traceback
        where = getattr(args, "path", None) or ", ".join(args.paths)
        print(f"nemoflow: error: {_display(where)}: cannot read "
              f"({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
