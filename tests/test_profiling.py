"""``nf.stats()`` and ``nf.profile()``: counts and latency histograms kept by the delivery thread,
on both cores, from threads and asyncio tasks."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def stats(nf):
    nf.stats.enable()
    nf.stats.reset()
    yield nf.stats
    nf.stats.disable()
    nf.stats.reset()


def _timed(nf, name, start_us, end_us, scope_type=None):
    h = nf.scope.push(name, nf.ScopeType.Tool if scope_type is None else scope_type,
                      timestamp=T0 + dt.timedelta(microseconds=start_us))
    nf.scope.pop(h, timestamp=T0 + dt.timedelta(microseconds=end_us))


def test_counts_totals_and_percentiles(nf, stats):
    rng = np.random.default_rng(7)
    durations_us = rng.integers(1, 200_000, size=400)
    at = 0
    for d in durations_us:
        _timed(nf, "search", at, at + int(d))
        at += int(d) + 1
    _timed(nf, "plan", 0, 5, nf.ScopeType.Agent)
    for _ in range(3):
        with pytest.raises(ValueError), nf.trace("fails"):
            raise ValueError("no")
    s = nf.stats()
    row = s.get("tool", "search")
    d = durations_us * 1000
    assert row["count"] == 400 and row["errors"] == 0
    assert row["total_ms"] == d.sum() / 1e6 and row["max_ms"] == d.max() / 1e6
    i = s.keys.index(("tool", "search"))
    assert s.min_ns[i] == d.min() and s.hist[i].sum() == 400
    for q in (50, 90, 99):
        assert s.percentile(q)[i] == pytest.approx(np.percentile(d, q), rel=0.09)
    assert s.get("function", "fails")["errors"] == 3
    assert s.get("agent", "plan")["count"] == 1 and s.get("agent", "plan")["max_ms"] == 0.005
    # NumPy arrays, one entry per key
    assert s.count.dtype == np.int64 and s.hist.shape == (len(s.keys), nf.profiling.BUCKETS)
    assert s.bucket_edges_ns.shape == (nf.profiling.BUCKETS + 1,)
    assert list(s.category) == [k[0] for k in s.keys]
    text = str(s)
    assert text.splitlines()[0].split()[:3] == ["type", "name", "count"]
    assert "search" in text and "400" in text
    assert nf.diagnostics()["exporters"]["nemoflow.stats"]["keys"] == 3


def test_threads_count_every_scope(nf, stats):
    def work(k):
        for _ in range(50):
            with nf.trace(f"job{k % 2}"):
                pass

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    s = nf.stats()
    assert s.get("function", "job0")["count"] == 100 == s.get("function", "job1")["count"]


def test_reset_and_disable(nf, stats):
    with nf.trace("a"):
        pass
    assert nf.stats().get("function", "a")["count"] == 1
    nf.stats.reset()
    assert len(nf.stats()) == 0
    nf.stats.disable()
    assert not nf.stats.enabled
    with nf.trace("a"):
        pass
    assert len(nf.stats()) == 0  # not counted while disabled


def test_profile_block_counts_only_its_region(nf, stats):
    with nf.trace("before"):
        pass
    with nf.profile("region") as prof:
        for _ in range(3):
            with nf.trace("inside"), nf.trace("nested"):
                pass
    with nf.trace("after"):
        pass
    s = prof.stats()  # complete right after the block: the exit waited for delivery
    assert {k: s.get(*k)["count"] for k in s.keys} == {
        ("function", "region"): 1, ("function", "inside"): 3, ("function", "nested"): 3}
    everything = nf.stats()
    assert {"before", "after", "inside"} <= {name for _, name in everything.keys}
    # a second region of the same profile adds to it
    with prof:
        with nf.trace("inside"):
            pass
    assert prof.stats().get("function", "inside")["count"] == 4
    assert prof.stats().get("function", "region")["count"] == 2


def test_profile_enables_stats(nf):
    nf.stats.disable()
    nf.stats.reset()
    try:
        with nf.profile("p") as prof, nf.trace("x"):
            pass
        assert nf.stats.enabled
        assert prof.stats().get("function", "x")["count"] == 1
        assert nf.stats().get("function", "x")["count"] == 1
    finally:
        nf.stats.disable()
        nf.stats.reset()


def test_profile_follows_asyncio_tasks_and_threads(nf, stats):
    async def fetch(i):
        with nf.trace("fetch"):
            await asyncio.sleep(0.001 * (i % 3))

    async def outside():
        with nf.trace("outside"):
            await asyncio.sleep(0.002)

    def in_thread():
        with nf.trace("threaded"):
            pass

    async def main():
        other = asyncio.create_task(outside())  # started before the region: not in it
        with nf.profile("batch") as prof:
            await asyncio.gather(*(fetch(i) for i in range(10)))
            worker = threading.Thread(target=nf.wrap(in_thread))
            worker.start()
            worker.join(timeout=30)
        await other
        return prof

    prof = asyncio.run(main())
    s = prof.stats()
    assert s.get("function", "fetch")["count"] == 10
    assert s.get("function", "threaded")["count"] == 1
    assert s.get("function", "outside") is None
    assert nf.stats().get("function", "outside")["count"] == 1


def test_concurrent_regions_of_one_profile_in_tasks(nf, stats):
    prof = nf.profile("req")

    async def handle(i):
        with prof:
            with nf.trace("step"):
                await asyncio.sleep(0.001 * (i % 2))

    async def main():
        await asyncio.gather(*(handle(i) for i in range(8)))

    asyncio.run(main())
    s = prof.stats()
    assert s.get("function", "req")["count"] == 8 and s.get("function", "step")["count"] == 8


def test_profile_as_decorator(nf, stats):
    @nf.profile
    def handler(fail=False):
        with nf.trace("work"):
            if fail:
                raise KeyError("x")
        return 7

    @nf.profile("ahandler")
    async def ahandler():
        with nf.trace("awork"):
            await asyncio.sleep(0)
        return 8

    assert handler() == 7 and handler() == 7
    with pytest.raises(KeyError):
        handler(fail=True)
    s = handler.profile.stats()
    name = handler.__qualname__
    assert s.get("function", name)["count"] == 3 and s.get("function", name)["errors"] == 1
    assert s.get("function", "work")["count"] == 3
    assert asyncio.run(ahandler()) == 8
    assert ahandler.profile.stats().get("function", "awork")["count"] == 1
    assert ahandler.profile.stats().get("function", "work") is None


def test_environment_variable_enables_stats(nf):
    code = ("import nemoflow as nf\n"
            "with nf.trace('x'):\n    pass\n"
            "s = nf.stats()\nprint(nf.stats.enabled, s.get('function', 'x')['count'])\n")
    env = dict(os.environ, NEMOFLOW_STATS="1")
    if nf.BACKEND == "python":
        env["NEMOFLOW_NO_EXTENSIONS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "1"]


@pytest.mark.filterwarnings("ignore:nemoflow. exporter 'nemoflow.stats' raised")
def test_a_failing_batch_is_counted_not_raised(nf, stats, monkeypatch):
    consumer = nf.stats._get()

    def broken(*args):
        raise RuntimeError("histogram")

    monkeypatch.setattr(consumer._global, "add", broken)
    with nf.trace("x"):
        pass
    nf.stats()
    assert nf.diagnostics()["exporters"]["nemoflow.stats"]["errors"] >= 1


def test_child_delivered_before_its_parent_is_still_in_the_profile(nf):
    # A child running on another thread can be delivered before its parent's start (different
    # rings): it is kept waiting, then adopted when the parent turns out to be in the region.
    from types import SimpleNamespace as Ev

    consumer = nf.profiling._StatsConsumer()
    hist = nf.profiling._Histograms()
    region = "r" * 36

    def ev(uuid, parent, phase, ts, name):
        return Ev(kind="scope", uuid=uuid, parent_uuid=parent, scope_category=phase,
                  timestamp_ns=ts, category="function", name=name, metadata=None)

    consumer.export([ev(region, "root", "start", 0, "region")])
    consumer.begin_region(region, hist)
    consumer.export([ev("c", "p", "start", 10, "child"), ev("c", "p", "end", 30, "child"),
                     ev("o", "elsewhere", "start", 10, "other"),
                     ev("o", "elsewhere", "end", 20, "other")])
    consumer.export([ev("p", region, "start", 5, "parent"), ev("p", region, "end", 40, "parent"),
                     ev(region, "root", "end", 50, "region")])
    consumer.end_region(region)
    s = hist.snapshot()
    assert sorted(name for _, name in s.keys) == ["child", "parent", "region"]
    assert consumer.snapshot().get("function", "other")["count"] == 1
    assert consumer._waiting == {} and consumer._member == {}
