"""Run bench/ and print per-operation costs in ×call units, with targets and ratios.

    python scripts/bench_compare.py            # runs the benchmarks, then prints the table
    python scripts/bench_compare.py --json F   # prints the table of an earlier --benchmark-json

A ×call is one empty Python function call measured in the same run, timeit style: per-iteration
time of a loop doing the operation / per-iteration time of the same loop calling an empty
function (the unit PERFORMANCE targets are stated in). The bare loop is printed too: subtracting
it from both sides would make every ratio larger, since CPython 3.11+ inlines Python calls.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

# (operation, attached) -> target in ×call on the compiled core (None: reported, no target yet)
TARGETS = {
    ("scope pair", "none"): 6,
    ("push+pop", "none"): 6,
    ("mark", "none"): 4,
    ("scope pair", "subscriber"): None,
    ("push+pop", "subscriber"): None,
    ("mark", "subscriber"): None,
}
TWIN_RATIO_TARGET = 2.0  # compiled core at least this much faster than the twin


def run_benchmarks(path: str) -> None:
    cmd = [sys.executable, "-m", "pytest", "bench", "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={path}", "--benchmark-min-rounds=20"]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    subprocess.run(cmd, check=True, cwd=root)


def table(path: str) -> str:
    with open(path) as f:
        data = json.load(f)
    n = 1000
    median = {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        key = (info["op"], info.get("backend", "-"), info.get("attached", "-"))
        median[key] = b["stats"]["median"] / n * 1e9  # ns per operation incl. loop
    loop = median[("bare loop", "-", "-")]
    unit = median[("empty call", "-", "-")]

    def xcall(ns):
        return ns / unit

    lines = [f"1 ×call = {unit:.1f} ns in this run (loop iteration calling an empty function; "
             f"bare loop {loop:.1f} ns)", ""]
    lines.append(f"{'operation':<22}{'attached':<12}{'cython ×call':>13}{'python ×call':>14}"
                 f"{'twin/compiled':>15}{'target':>8}  result")
    ops = sorted({(op, att) for (op, be, att) in median if be != "-"},
                 key=lambda k: (k[1], k[0]))
    for op, att in ops:
        c = median.get((op, "cython", att))
        p = median.get((op, "python", att))
        cx = xcall(c) if c is not None else None
        px = xcall(p) if p is not None else None
        ratio = (px / cx) if (cx and px) else None
        target = TARGETS.get((op, att))
        if cx is None:
            verdict = "compiled core not measured"
        else:
            parts = []
            if target is not None:
                parts.append("met" if cx <= target else f"missed (×{cx / target:.1f} over)")
            if ratio is not None:
                parts.append(f"twin ratio {'met' if ratio >= TWIN_RATIO_TARGET else 'missed'}")
            verdict = ", ".join(parts) or "-"
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        lines.append(f"{op:<22}{att:<12}{fmt(cx):>13}{fmt(px):>14}"
                     f"{('-' if ratio is None else f'{ratio:.1f}x'):>15}"
                     f"{('-' if target is None else str(target)):>8}  {verdict}")
    refs = [(op, xcall(ns)) for (op, be, att), ns in median.items() if be == "-"]
    lines.append("")
    lines.append("references: " + ", ".join(f"{op} {x:.1f}" for op, x in sorted(refs)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="read this pytest-benchmark JSON instead of running")
    args = parser.parse_args()
    if args.json:
        print(table(args.json))
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        run_benchmarks(path)
        print(table(path))


if __name__ == "__main__":
    main()
