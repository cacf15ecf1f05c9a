"""Benchmark records: every figure docs/ quotes is saved with the commit, torch version and machine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import records  # noqa: E402

# Shared code, and an end-to-end check whose output is not a table of figures docs/ quote.
NOT_A_BENCHMARK = {"records.py", "quality_page.py", "malf_end_to_end.sh"}


def test_a_saved_record_carries_what_measured_it(tmp_path: Path) -> None:
    path = records.save_record("demo", "one", {"rows": [{"x": 1.5}]}, command=["python", "demo.py"], folder=tmp_path)
    assert path == tmp_path / "demo" / "one.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["rows"] == [{"x": 1.5}]
    assert record["command"] == "python demo.py"
    measured = record["measured"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert measured["medsaga_commit"].removesuffix("+uncommitted") == head
    import torch

    assert measured["torch"] == torch.__version__
    assert measured["cpu"] and measured["cores"] >= 1 and re.match(r"\d{4}-\d\d-\d\dT", measured["date"])
    assert [p.name for p in (tmp_path / "demo").iterdir()] == ["one.json"]  # no temporary left behind


def test_keep_turns_a_medsaga_benchmark_json_into_a_record(tmp_path: Path) -> None:
    source = tmp_path / "benchmark.json"
    source.write_text(json.dumps({"entries": [{"name": "galore", "peak": 1}]}), encoding="utf-8")
    target = tmp_path / "results" / "benchmark_methods" / "vit_b-256.json"
    assert records.main(["keep", str(source), str(target), "--command-line", "bash benchmarks/x.sh"]) == 0
    record = json.loads(target.read_text(encoding="utf-8"))
    assert record["entries"] == [{"name": "galore", "peak": 1}]
    assert record["command"] == "bash benchmarks/x.sh" and "torch" in record["measured"]


def test_keep_refuses_a_json_that_is_not_an_object(tmp_path: Path) -> None:
    source = tmp_path / "benchmark.json"
    source.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(SystemExit):
        records.main(["keep", str(source), str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                                          if p.name not in NOT_A_BENCHMARK)
                         + sorted(p.name for p in (ROOT / "benchmarks").glob("*.sh") if p.name not in NOT_A_BENCHMARK))
def test_every_benchmark_script_leaves_a_record_with_its_environment(script: str) -> None:
    """A script whose figures reach docs/ writes them through records.py, not only to git-ignored runs/."""
    text = (ROOT / "benchmarks" / script).read_text(encoding="utf-8")
    # A shell script keeps medsaga benchmark's JSON; a Python script saves through records.save_record,
    # or (the resumable tables) writes records itself with records.environment().
    uses_records = ("benchmarks/records.py keep" in text if script.endswith(".sh")
                    else re.search(r"\bsave_record\(|\benvironment\(\)|from records import commit", text))
    assert uses_records, f"benchmarks/{script} writes no committed record (benchmarks/records.py)"
