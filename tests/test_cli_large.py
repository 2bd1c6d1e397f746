"""``nemoflow summary --stats`` on a generated trace of 1 M events, checked against the same
statistics computed directly with NumPy from the generator's arrays."""

from __future__ import annotations

import orjson
import pytest
from big_trace import expected_rows, write

from nemoflow import cli


@pytest.mark.slow
def test_one_million_events_match_numpy(tmp_path, capsys):
    path = str(tmp_path / "big.jsonl")
    expected = write(path, 1_000_000)
    code = cli.main(["summary", "--stats", "--json", path])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = orjson.loads(out)
    assert (result["events"], result["scopes"], result["marks"]) == (1_000_000, 500_000, 0)
    assert (result["open"], result["unmatched_ends"]) == (0, 0)
    want = expected_rows(expected)
    got = {(r["category"], r["name"]): r for r in result["scopes_by_name"]}
    assert set(got) == set(want)
    for key, row in want.items():
        for field, value in row.items():
            if isinstance(value, float) and field.startswith("p"):
                assert got[key][field] == pytest.approx(value, rel=1e-12), (key, field)
            else:
                assert got[key][field] == value, (key, field)
    assert result["errors"] == sum(r["errors"] for r in want.values())
    assert result["models"] == [{"model": "(unknown)", "calls": 100_000, "input_tokens": 0,
                                 "output_tokens": 0, "ttfc_p50_ms": None}]
