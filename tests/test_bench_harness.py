from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CASES_SOURCE = '''
from bench.result import BenchResult


def good():
    return [
        BenchResult("good", "speed", 200.0, 100.0, "tokens/s", True, "same ids"),
        BenchResult("good", "memory", 1.5, 3.0, "GB", False),
    ]


def broken():
    raise RuntimeError("reference library missing")
'''


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    (tmp_path / "fake_bench_cases.py").write_text(CASES_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    from bench import run as module

    cases = {"good": "fake_bench_cases:good", "broken": "fake_bench_cases:broken"}
    monkeypatch.setattr(module, "CASES", cases)
    return module


def test_table_and_json(run, tmp_path, capsys):
    out = tmp_path / "results" / "bench.json"
    assert run.main(["good", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["case", "metric", "plmkit", "reference", "ratio", "unit", "better", "note"]
    expected = ["good", "speed", "200.0", "100.0", "2.00x", "tokens/s", "higher", "same", "ids"]
    assert lines[2].split() == expected
    assert lines[3].split() == ["good", "memory", "1.5", "3", "0.50x", "GB", "lower"]
    data = json.loads(out.read_text())
    assert [r["ratio"] for r in data["results"]] == [2.0, 0.5]
    assert data["results"][0] == {
        "case": "good", "metric": "speed", "plmkit": 200.0, "reference": 100.0, "unit": "tokens/s",
        "higher_is_better": True, "note": "same ids", "ratio": 2.0,
    }
    assert data["failures"] == {}


def test_failing_case_is_reported_and_others_still_run(run, capsys):
    assert run.main(["broken", "good"]) == 1
    out = capsys.readouterr().out
    assert "2.00x" in out
    assert "FAILED broken: RuntimeError: reference library missing" in out


def test_unknown_name_and_list(run, capsys):
    assert run.main(["godo"]) == 2
    expected = "error: unknown benchmark 'godo' (did you mean 'good'?); --list shows them\n"
    assert capsys.readouterr().err == expected
    assert run.main(["--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing == ["good    fake_bench_cases:good", "broken  fake_bench_cases:broken"]


def test_every_registered_case_resolves_to_a_function(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench import run as module
    from bench.result import BenchResult

    assert module.CASES, "the registry is empty"
    for name in module.CASES:
        assert callable(module.resolve(name)), name
    assert math.isnan(BenchResult("x", "y", 1.0, 0.0, "s").ratio)
