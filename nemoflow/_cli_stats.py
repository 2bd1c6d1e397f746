"""``nemoflow summary --stats``: latency, error and token statistics over ATOF events, streamed.

Events are read one at a time and only the scopes still open are kept as events; every finished
scope becomes a row of the in-memory recorder's table (``rows_to_numpy``), converted a chunk at a
time, and its duration and self time are appended to per-(scope type, name) NumPy arrays: 16
bytes per finished scope, whatever the size of the payloads.
"""

from __future__ import annotations

import sys

import numpy as np

from .codecs.normalize import merged_usage, model_name, normalize_response
from .exporters.memory import rows_to_numpy

_CHUNK = 8192
_PCTS = (50, 90, 99)
SORT_KEYS = ("total", "self", "count", "errors", "p50", "p90", "p99", "max", "ttfc", "name")


class _Grow:
    """An int64 or float64 array that grows by doubling."""

    __slots__ = ("buf", "n")

    def __init__(self, dtype):
        self.buf = np.empty(16, dtype=dtype)
        self.n = 0

    def extend(self, values) -> None:
        need = self.n + len(values)
        if need > self.buf.size:
            grown = np.empty(max(need, 2 * self.buf.size), dtype=self.buf.dtype)
            grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.buf[self.n:need] = values
        self.n = need

    def values(self):
        return self.buf[:self.n]


class _Key:
    __slots__ = ("durations", "errors", "selfs", "ttfc")

    def __init__(self):
        self.durations = _Grow(np.int64)
        self.selfs = _Grow(np.int64)
        self.errors = 0
        self.ttfc: list = []


class _Model:
    __slots__ = ("calls", "input", "output", "ttfc")

    def __init__(self):
        self.calls = self.input = self.output = 0
        self.ttfc: list = []


def _status(meta) -> str:
    status = meta.get("otel.status_code") if isinstance(meta, dict) else None
    return status if status in ("OK", "ERROR") else ""


def _ttfc(profile) -> float | None:
    value = profile.get("time_to_first_chunk") if isinstance(profile, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class Stats:
    """Accumulates statistics over events added one at a time (``add``), then ``result()``."""

    def __init__(self, ts_ns):
        self._ts_ns = ts_ns
        self._open: dict = {}  # uuid -> [parent, name, category, start_ns, children_ns, depth]
        self._rows: list = []
        self._selfs: list = []
        self._keys: dict = {}
        self._models: dict = {}
        self.events = self.scopes = self.marks = self.unmatched_ends = 0

    def add(self, ev: dict) -> None:
        """Take one (checked) ATOF event."""
        self.events += 1
        if ev["kind"] == "mark":
            self.marks += 1
            return
        uuid = ev["uuid"]
        ts = self._ts_ns(ev["timestamp"])
        if ev["scope_category"] == "start":
            self.scopes += 1
            parent = self._open.get(ev["parent_uuid"])
            self._open[uuid] = [ev["parent_uuid"], ev["name"], ev["category"], ts, 0,
                                0 if parent is None else parent[5] + 1]
            return
        start = self._open.pop(uuid, None)
        if start is None:  # its start is in no file read: no duration to count
            self.unmatched_ends += 1
            return
        parent_uuid, name, category, start_ns, children, depth = start
        duration = ts - start_ns
        parent = self._open.get(parent_uuid)
        if parent is not None:
            parent[4] += duration
        self._rows.append((uuid, parent_uuid or "", name, "scope", category, start_ns, ts,
                           _status(ev["metadata"]), depth))
        # Children that ran concurrently can add up to more than their parent: never below 0.
        self._selfs.append(max(duration - children, 0))
        if category == "llm":
            self._llm(ev, (category, name))
        if len(self._rows) >= _CHUNK:
            self._flush()

    def _llm(self, ev: dict, key) -> None:
        data, profile = ev.get("data"), ev.get("category_profile")
        try:
            response = normalize_response(data, profile)
        except Exception:  # a payload the codecs do not know: the raw usage still counts
            response = None
        usage = merged_usage(response, data)
        model = model_name(response=response, end_data=data, end_profile=profile) or "(unknown)"
        stats = self._models.get(model)
        if stats is None:
            stats = self._models[model] = _Model()
        stats.calls += 1
        stats.input += usage.prompt_tokens or 0
        stats.output += usage.completion_tokens or 0
        ttfc = _ttfc(profile)
        if ttfc is not None:
            stats.ttfc.append(ttfc)
            self._key(key).ttfc.append(ttfc)

    def _key(self, key) -> _Key:
        found = self._keys.get(key)
        if found is None:
            found = self._keys[key] = _Key()
        return found

    def _flush(self) -> None:
        if not self._rows:
            return
        table = rows_to_numpy(self._rows)
        selfs = np.asarray(self._selfs, dtype=np.int64)
        self._rows, self._selfs = [], []
        index: dict = {}
        group = np.fromiter((index.setdefault(k, len(index))
                             for k in zip(table["category"].tolist(), table["name"].tolist())),
                            dtype=np.intp, count=len(table))
        order = np.argsort(group, kind="stable")
        bounds = np.flatnonzero(np.diff(group[order])) + 1
        errors = table["status"] == "ERROR"
        keys = list(index)
        for part in np.split(order, bounds):
            acc = self._key(keys[group[part[0]]])
            acc.durations.extend(table["duration_ns"][part])
            acc.selfs.extend(selfs[part])
            acc.errors += int(np.count_nonzero(errors[part]))

    def result(self, sort: str = "total") -> dict:
        """The statistics as plain data (times in milliseconds), rows sorted by ``sort``."""
        self._flush()
        rows = []
        for (category, name), acc in self._keys.items():
            d = acc.durations.values()
            if d.size == 0:
                continue
            p50, p90, p99 = (float(v) for v in np.percentile(d, _PCTS))
            ttfc = np.asarray(acc.ttfc, dtype=np.float64)
            rows.append({
                "category": category, "name": name, "count": int(d.size),
                "errors": acc.errors, "total_ms": int(d.sum()) / 1e6,
                "self_ms": int(acc.selfs.values().sum()) / 1e6,
                "p50_ms": p50 / 1e6, "p90_ms": p90 / 1e6, "p99_ms": p99 / 1e6,
                "max_ms": int(d.max()) / 1e6,
                "ttfc_p50_ms": float(np.percentile(ttfc, 50)) * 1e3 if ttfc.size else None,
            })
        field = {"ttfc": "ttfc_p50_ms", "count": "count", "errors": "errors"}.get(
            sort, f"{sort}_ms")
        if sort == "name":
            rows.sort(key=lambda r: (r["name"], r["category"]))
        else:
            rows.sort(key=lambda r: (-(r[field] if r[field] is not None else -1), r["name"]))
        models = []
        for model, acc in sorted(self._models.items(), key=lambda kv: (-kv[1].calls, kv[0])):
            ttfc = np.asarray(acc.ttfc, dtype=np.float64)
            models.append({
                "model": model, "calls": acc.calls, "input_tokens": acc.input,
                "output_tokens": acc.output,
                "ttfc_p50_ms": float(np.percentile(ttfc, 50)) * 1e3 if ttfc.size else None,
            })
        errors = sum(r["errors"] for r in rows)
        return {"events": self.events, "scopes": self.scopes, "marks": self.marks,
                "errors": errors, "open": len(self._open), "unmatched_ends": self.unmatched_ends,
                "sort": sort, "scopes_by_name": rows, "models": models}


# -- rendering ----------------------------------------------------------------------------

_COLUMNS = (("type", "category"), ("name", "name"), ("count", "count"), ("errors", "errors"),
            ("total ms", "total_ms"), ("self ms", "self_ms"), ("p50 ms", "p50_ms"),
            ("p90 ms", "p90_ms"), ("p99 ms", "p99_ms"), ("max ms", "max_ms"),
            ("ttfc p50 ms", "ttfc_p50_ms"))
_MODEL_COLUMNS = (("model", "model"), ("calls", "calls"), ("tokens in", "input_tokens"),
                  ("tokens out", "output_tokens"), ("ttfc p50 ms", "ttfc_p50_ms"))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _tables(result: dict):
    """(title, headers, rows of cells) of each table to print."""
    yield ("Scopes", [h for h, _ in _COLUMNS],
           [[_cell(r[k]) for _, k in _COLUMNS] for r in result["scopes_by_name"]])
    if result["models"]:
        yield ("LLM models", [h for h, _ in _MODEL_COLUMNS],
               [[_cell(r[k]) for _, k in _MODEL_COLUMNS] for r in result["models"]])


def headline(result: dict, files: int) -> str:
    """The one-line totals above the tables."""
    where = f" in {files} file(s)" if files else ""
    text = (f"{result['events']} events{where}: {result['scopes']} scopes, "
            f"{result['marks']} marks, {result['errors']} errors")
    if result["open"]:
        text += f", {result['open']} never ended"
    if result["unmatched_ends"]:
        text += f", {result['unmatched_ends']} ends without a start"
    return text


def render_plain(result: dict, files: int) -> str:
    """The tables as aligned plain text (used when ``rich`` is not installed)."""
    out = [headline(result, files)]
    for title, headers, rows in _tables(result):
        widths = [max(len(c) for c in col) for col in zip(headers, *rows)]
        out.append("")
        out.append(title)
        for i, cells in enumerate([headers, *rows]):
            out.append("  ".join(c.ljust(w) if j == 0 or (j == 1 and title == "Scopes")
                                 else c.rjust(w)
                                 for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def render(result: dict, files: int, stream=None) -> None:
    """Print the tables with ``rich`` when it is installed, else as plain text."""
    stream = stream or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        stream.write(render_plain(result, files) + "\n")
        return
    console = Console(file=stream, highlight=False,
                      width=None if stream.isatty() else 200)
    console.print(headline(result, files), markup=False)
    for title, headers, rows in _tables(result):
        table = Table(title=title, title_justify="left")
        for j, header in enumerate(headers):
            left = j == 0 or (j == 1 and title == "Scopes")
            table.add_column(header, justify="left" if left else "right",
                             overflow="fold")
        for cells in rows:
            table.add_row(*cells)
        console.print(table)


# -- progress -----------------------------------------------------------------------------

class Progress:
    """Bytes read out of a known total (or unknown), shown on stderr; ``rich`` when installed."""

    def __init__(self, total: int | None, stream=None):
        self._stream = stream or sys.stderr
        self._total = total
        self._done = 0
        self._shown = -1
        self._rich = None
        try:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import Progress as Bar
        except ImportError:
            return
        self._rich = Bar("reading", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                         TimeRemainingColumn(), console=Console(file=self._stream),
                         transient=False)
        self._task = self._rich.add_task("reading", total=total)
        self._rich.start()

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more read."""
        self._done += nbytes
        if self._rich is not None:
            self._rich.update(self._task, completed=self._done)
            return
        mb = self._done >> 20
        if mb != self._shown:
            self._shown = mb
            of = f" / {self._total >> 20} MB" if self._total else " MB"
            self._stream.write(f"\rreading {mb}{of}")
            self._stream.flush()

    def close(self) -> None:
        """Finish the bar."""
        if self._rich is not None:
            self._rich.stop()
        else:
            self._stream.write("\n")
            self._stream.flush()
