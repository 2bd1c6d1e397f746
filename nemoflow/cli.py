"""The ``nemoflow`` command: read ATOF JSONL files.

    nemoflow summary TRACE.jsonl    the scope tree with durations, status and marks
    nemoflow validate TRACE.jsonl   check every line against the ATOF 0.1 envelope
    nemoflow convert TRACE.jsonl --to atif [-o OUT]   the run as an ATIF trajectory
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

import orjson

_SCOPE_KEYS = frozenset({"atof_version", "attributes", "category", "category_profile", "data",
                         "data_schema", "kind", "metadata", "name", "parent_uuid",
                         "scope_category", "timestamp", "uuid"})
_MARK_KEYS = _SCOPE_KEYS - {"attributes", "scope_category"}


def read_events(path: str) -> list:
    """The events of an ATOF JSONL file, as dicts, in file order."""
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def _ts(value) -> float:
    """Seconds since the epoch of an ATOF timestamp (RFC 3339 or integer epoch µs)."""
    if isinstance(value, int):
        return value / 1e6
    text = value.replace("Z", "+00:00")
    frac_ns = 0
    if "." in text:  # datetime keeps µs only: carry the nanosecond digits separately
        head, rest = text.split(".", 1)
        n = 0
        while n < len(rest) and rest[n].isdigit():
            n += 1
        digits, tz = rest[:n], rest[n:]
        frac_ns = int(digits.ljust(9, "0")[:9])
        text = head + tz
    return datetime.fromisoformat(text).timestamp() + frac_ns / 1e9


def validate(events: list) -> list:
    """Problems found in a list of event dicts (empty when the stream is valid ATOF 0.1)."""
    problems = []
    open_scopes = {}
    for i, ev in enumerate(events, 1):
        kind = ev.get("kind")
        expected = _SCOPE_KEYS if kind == "scope" else _MARK_KEYS if kind == "mark" else None
        if expected is None:
            problems.append(f"line {i}: unknown kind {kind!r}")
            continue
        if set(ev) != expected:
            problems.append(f"line {i}: fields {sorted(set(ev) ^ expected)} missing or extra")
            continue
        if ev["atof_version"] != "0.1":
            problems.append(f"line {i}: atof_version {ev['atof_version']!r}")
        if kind == "scope":
            # other writers' categories are kept (ATOF): only the type is checked
            if not isinstance(ev["category"], str):
                problems.append(f"line {i}: category {ev['category']!r} is not a string")
            if ev["scope_category"] == "start":
                open_scopes[ev["uuid"]] = ev
            elif ev["scope_category"] == "end":
                if open_scopes.pop(ev["uuid"], None) is None:
                    problems.append(f"line {i}: end of {ev['uuid']} without a start")
            else:
                problems.append(f"line {i}: scope_category {ev['scope_category']!r}")
    # Implicit roots are never written: a parent that is not in the file must be a root, i.e.
    # never itself have a parent in the file. Anything else is a dangling link.
    for uuid, ev in open_scopes.items():
        problems.append(f"scope {ev['name']!r} ({uuid}) has no end event")
    return problems


def summary(events: list) -> str:
    """A readable tree of the scopes (with durations and status) and marks of a trace."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nemoflow", description="Read ATOF JSONL traces.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("summary", "print the scope tree"), ("validate", "check the format")):
        p = sub.add_parser(name, help=text)
        p.add_argument("path", help="an ATOF JSONL file")
    p = sub.add_parser("convert", help="convert a trace to another format")
    p.add_argument("path", help="an ATOF JSONL file")
    p.add_argument("--to", required=True, choices=["atif"], help="the output format")
    p.add_argument("-o", "--output", default="-", help="output file (default: standard output)")
    p.add_argument("--session-id", help="trajectory session id (default: the top-level agent "
                   "scope's uuid)")
    p.add_argument("--agent-name", help="agent name (default: the top-level agent's name)")
    p.add_argument("--agent-version", default="0", help="agent version (default: 0)")
    args = parser.parse_args(argv)
    events = read_events(args.path)
    if args.command == "convert":
        text = to_atif(events, args.session_id, args.agent_name, args.agent_version)
        if args.output == "-":
            sys.stdout.write(text + "\n")
        else:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return 0
    if args.command == "summary":
        print(summary(events))
        return 0
    problems = validate(events)
    for problem in problems:
        print(problem)
    print(f"{args.path}: {len(events)} events, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
