"""Reading a large trace: ``nemoflow summary --stats`` and ``nemoflow report`` on a generated
trace of 1 M events (100 k with ``--benchmark-disable``, the CI smoke run).

Each round runs the real command in a fresh interpreter, which reports its own peak resident
memory (``ru_maxrss``); the same interpreter importing the command and NumPy without reading
anything gives the baseline. ``scripts/bench_compare.py`` prints both with the time
(``kind="cli"``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from big_trace import write

ROUNDS = 3
# VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark into ru_maxrss
# across exec, so a child of a large pytest process would report the parent's size.
_RUN = """
import resource, sys
from nemoflow.cli import main
import numpy
code = main(sys.argv[1:]) if len(sys.argv) > 1 else 0
sys.stdout.flush()
usage = resource.getrusage(resource.RUSAGE_SELF)
try:
    with open("/proc/self/status") as f:
        peak = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
except (OSError, StopIteration):
    peak = usage.ru_maxrss
sys.stderr.write("peak_kb=%d cpu_s=%f\\n" % (peak, usage.ru_utime + usage.ru_stime))
sys.exit(code)
"""


def _run(*args) -> tuple:
    """The command's peak resident memory (KiB) and CPU time (s); it must succeed."""
    proc = subprocess.run([sys.executable, "-c", _RUN, *args], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    peak, cpu = proc.stderr.rsplit("peak_kb=", 1)[1].split()
    return int(peak), float(cpu.split("=")[1])


@pytest.fixture(scope="module")
def big_trace(request, tmp_path_factory):
    smoke = bool(request.config.getoption("benchmark_disable"))
    events = 100_000 if smoke else 1_000_000
    path = str(tmp_path_factory.mktemp("cli") / "big.jsonl")
    write(path, events)
    return path, events


@pytest.mark.parametrize("command", ["summary --stats", "report"])
def test_read_large_trace(benchmark, big_trace, tmp_path, command):
    path, events = big_trace
    if command == "report":
        args = ["report", path, "-o", str(tmp_path / "report.html")]
    else:
        args = ["summary", "--stats", "--json", path]
    runs = []
    benchmark.pedantic(lambda: runs.append(_run(*args)), rounds=ROUNDS, iterations=1)
    baseline = _run()[0]
    benchmark.extra_info.update(kind="cli", op=command, backend="-", events=events,
                                mb=os.path.getsize(path) / 1e6,
                                peak_rss_mb=max(p for p, _ in runs) / 1024,
                                baseline_rss_mb=baseline / 1024,
                                cpu_s=sorted(c for _, c in runs)[len(runs) // 2])
