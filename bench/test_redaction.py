"""Cost of redaction on an ``@nf.trace`` call, off and on, for both backends.

The call takes a user name, an email address and an API key and returns a small dict; a no-op
synchronous subscriber is registered so that its input and output are encoded (and, with
redaction on, redacted) on every call. ``scripts/bench_compare.py`` reports the figures in ×call
units from the same run, as in ``test_core_ops.py``.
"""

from __future__ import annotations

import pytest

N = 1000
R = range(N)

KEY = "sk-" + "proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4"  # assembled: no literal secret here


@pytest.fixture(params=["off", "on"])
def redaction(request, nf):
    nf.subscribers.register("bench-noop", lambda event: None)
    if request.param == "on":
        nf.redaction.enable()
    yield request.param
    nf.redaction.disable()
    nf.subscribers._clear()


def test_traced_call_redaction(benchmark, nf, redaction):
    @nf.trace
    def notify(user, email, key):
        return {"status": "sent", "to": email, "attempts": 1}

    def run():
        for _ in R:
            notify("alice", "alice@example.com", KEY)
    benchmark.group = f"decorated call, redaction {redaction}"
    benchmark.extra_info.update(op=f"redaction {redaction}", backend=nf.BACKEND,
                                attached="subscriber")
    benchmark(run)
