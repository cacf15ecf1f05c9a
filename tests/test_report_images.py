"""Which images an evaluation's page draws on (medsaga.report.report_images)."""

from __future__ import annotations

from pathlib import Path

from medsaga.report import report_images
from tests.dataset_factory import make_nnunet


def test_given_images_win_over_the_dataset_s_own(tmp_path: Path) -> None:
    checked = {"case_000": tmp_path / "mine" / "case_000.nii.gz"}
    found, note, dataset_json = report_images(tmp_path / "mine", checked, tmp_path / "gt", ["case_000"])
    assert found == checked and dataset_json is None
    assert note == f"Overlays drawn on the images of {tmp_path / 'mine'}."


def test_the_ground_truth_dataset_s_images_are_used_and_the_missing_ones_counted(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    found, note, dataset_json = report_images(None, {}, root, ["case_000", "case_001", "elsewhere"])
    assert sorted(found) == ["case_000", "case_001"]
    assert dataset_json == root / "dataset.json"
    assert all(path.is_file() and path.parent.name == "imagesTr" for path in found.values())
    assert "1 case(s) without one are drawn on a neutral grey" in note and str(root) in note


def test_a_plain_label_folder_gives_no_images(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    found, note, dataset_json = report_images(None, {}, labels, ["case_000"])
    assert found == {} and note.startswith("No images") and dataset_json is None
