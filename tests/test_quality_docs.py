"""quality_vs_baselines.py --update-docs: the README's and docs' tables are rewritten from the
records between their markers, and nothing else in the files changes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality_vs_baselines as qvb  # noqa: E402


def _record(task: str, contender: str, mean: float) -> dict:
    return {"task": task, "k": 2, "contender": contender, "budget_seconds": 600.0, "budget_clock": "cpu",
            "classes": {"liver": {"dice": mean, "hd95": 12.0, "nsd": 0.5}}, "mean_dice": mean,
            "trained": {"steps": 10}, "wall_seconds": {"train": 600.0}, "cpu_seconds_all_commands": 610.0}


def test_only_the_text_between_the_markers_is_replaced() -> None:
    text = "prose before\n<!-- t -->\nold table\n<!-- /t -->\nprose after\n"
    assert qvb.replace_between_markers(text, "t", ["| a |", "|---|"]) == (
        "prose before\n<!-- t -->\n| a |\n|---|\n<!-- /t -->\nprose after\n")


@pytest.mark.parametrize("text", ["no markers", "<!-- /t --> <!-- t -->", "<!-- t --><!-- /t --><!-- t --><!-- /t -->"])
def test_a_missing_reversed_or_repeated_marker_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="<!-- t -->"):
        qvb.replace_between_markers(text, "t", ["x"])


def test_update_docs_writes_the_summary_and_the_task_tables(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    readme = "# medsaga\n<!-- quality-vs-baselines:summary -->\nstale\n<!-- /quality-vs-baselines:summary -->\nend\n"
    performance = "intro\n<!-- quality-vs-baselines:tables -->\n<!-- /quality-vs-baselines:tables -->\n"
    (tmp_path / "README.md").write_text(readme, encoding="utf-8")
    (tmp_path / "docs" / "performance.md").write_text(performance, encoding="utf-8")
    records = [_record("chaos-mr-abdomen", "unet", 0.12), _record("chaos-mr-abdomen", "medsaga-default", 0.53)]
    written = qvb.update_docs(records, root=tmp_path)
    assert written == [tmp_path / "README.md", tmp_path / "docs" / "performance.md"]
    new_readme = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "stale" not in new_readme and new_readme.startswith("# medsaga\n") and new_readme.endswith("end\n")
    assert "| chaos-mr-abdomen | 2 | 0.120 | 0.530 | – | – |" in new_readme
    tables = (tmp_path / "docs" / "performance.md").read_text(encoding="utf-8")
    assert "#### chaos-mr-abdomen" in tables and "| 2 | medsaga-default | 0.530 |" in tables
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["README.md", "performance.md"]


def test_the_project_s_own_docs_carry_the_markers() -> None:
    for relative, name, _ in qvb.DOC_TABLES:
        text = (ROOT / relative).read_text(encoding="utf-8")
        assert text.count(f"<!-- {name} -->") == 1 and text.count(f"<!-- /{name} -->") == 1, relative
