"""Dataset discovery and case checks (nnU-Net layout, MSD style, plain pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsaga.data.checks import check_case, iter_checked_cases, load_case, summarize_case
from medsaga.data.dataset import discover_dataset
from medsaga.errors import InputError
from tests.data_paths import need_shared
from tests.dataset_factory import make_nnunet, phantom, write_nifti


def test_nnunet_layout_is_discovered(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=3, channels=("T1", "T2"))
    dataset = discover_dataset(root)
    assert dataset.layout == "nnunet"
    assert [c.case_id for c in dataset.cases] == ["case_000", "case_001", "case_002"]
    assert dataset.channel_names == ("T1", "T2")
    assert [p.name for p in dataset.cases[0].images] == ["case_000_0000.nii.gz", "case_000_0001.nii.gz"]
    assert dataset.cases[1].label == root / "labelsTr" / "case_001.nii.gz"
    assert dataset.declared_values == {0, 1, 2}


def test_missing_channel_file_is_named(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2, channels=("T1", "T2"))
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    with pytest.raises(InputError, match="case case_001 has channel files 0000; dataset.json declares 2"):
        discover_dataset(root)


def test_msd_style_dataset_json(tmp_path: Path) -> None:
    image, label = phantom()
    write_nifti(tmp_path / "imagesTr" / "liver_1.nii.gz", image)
    write_nifti(tmp_path / "labelsTr" / "liver_1.nii.gz", label)
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"name": "Task03", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "tumour"}}))
    dataset = discover_dataset(tmp_path)
    assert dataset.labels == {"background": 0, "liver": 1, "tumour": 2}
    assert dataset.channel_names == ("CT",)
    assert dataset.cases[0].case_id == "liver_1" and dataset.cases[0].label is not None


@pytest.mark.parametrize("layout", ["suffix", "labels_folder", "images_labels_folders"])
def test_plain_pairs(tmp_path: Path, layout: str) -> None:
    image, label = phantom()
    for case in ("a", "b"):
        if layout == "suffix":
            write_nifti(tmp_path / f"{case}.nii.gz", image)
            write_nifti(tmp_path / f"{case}_seg.nii.gz", label)
        elif layout == "labels_folder":
            write_nifti(tmp_path / f"{case}.nii.gz", image)
            write_nifti(tmp_path / "labels" / f"{case}.nii.gz", label)
        else:
            write_nifti(tmp_path / "images" / f"{case}.nii.gz", image)
            write_nifti(tmp_path / "labels" / f"{case}.nii.gz", label)
    dataset = discover_dataset(tmp_path)
    assert dataset.layout == "pairs"
    assert [c.case_id for c in dataset.cases] == ["a", "b"]
    assert all(c.label is not None and c.label.exists() for c in dataset.cases)
    assert dataset.labels is None


def test_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(InputError, match="no images found") as info:
        discover_dataset(tmp_path)
    assert info.value.path == tmp_path


def test_wrong_file_ending_is_explained(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    spec = json.loads((root / "dataset.json").read_text())
    spec["file_ending"] = ".nrrd"
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match=r"no images ending in '.nrrd'.*found .nii.gz files"):
        discover_dataset(root)


def test_malformed_dataset_json(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    (root / "dataset.json").write_text('{"labels": {"background": 0,}')
    with pytest.raises(InputError, match="not valid JSON") as info:
        discover_dataset(root)
    assert info.value.path == root / "dataset.json"


def test_clean_case_has_no_problems(tmp_path: Path) -> None:
    dataset = discover_dataset(make_nnunet(tmp_path / "ds", n_cases=2))
    summary = summarize_case(dataset, dataset.cases[0])
    assert summary.problems == ()
    _, label = phantom(seed=0)
    assert summary.label_counts == {v: int((label == v).sum()) for v in (0, 1, 2)}
    assert summary.shape == (16, 12, 6) and summary.orientation == "RAS"
    assert len(list(iter_checked_cases(dataset))) == 2


def test_label_on_another_grid_is_reported(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    _, label = phantom()
    shifted = np.diag([1.0, 1.0, 2.0, 1.0])
    shifted[:3, 3] = [0.0, 5.0, 0.0]
    label_path = write_nifti(root / "labelsTr" / "case_001.nii.gz", label, shifted)
    dataset = discover_dataset(root)
    problems = check_case(dataset, dataset.cases[1], load_case(dataset.cases[1]))
    assert len(problems) == 1
    assert problems[0].path == label_path and problems[0].kind == "grid"
    assert "origin" in problems[0].message
    with pytest.raises(InputError, match="case case_001: label grid differs from the image: origin"):
        list(iter_checked_cases(dataset))


def test_label_with_other_shape_is_reported(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    write_nifti(root / "labelsTr" / "case_000.nii.gz", np.zeros((16, 12, 5), np.uint8))
    dataset = discover_dataset(root)
    (problem,) = check_case(dataset, dataset.cases[0], load_case(dataset.cases[0]))
    assert "shape (16, 12, 6) != (16, 12, 5)" in problem.message


def test_undeclared_and_fractional_labels(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    _, label = phantom()
    label[0, 0, 0] = 7
    write_nifti(root / "labelsTr" / "case_000.nii.gz", label)
    write_nifti(root / "labelsTr" / "case_001.nii.gz", label.astype(np.float32) * 0.5)
    dataset = discover_dataset(root)
    undeclared = check_case(dataset, dataset.cases[0], load_case(dataset.cases[0]))
    fractional = check_case(dataset, dataset.cases[1], load_case(dataset.cases[1]))
    assert [p.kind for p in undeclared] == ["values"]
    assert "label values [7] are not declared" in undeclared[0].message
    assert "non-integer values (e.g. 3.5)" in fractional[0].message  # label[0, 0, 0] = 7


def test_float_stored_integer_labels_are_fine(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    _, label = phantom()
    write_nifti(root / "labelsTr" / "case_000.nii.gz", label.astype(np.float32))
    dataset = discover_dataset(root)
    assert check_case(dataset, dataset.cases[0], load_case(dataset.cases[0])) == []


def test_malf_brain_dataset() -> None:
    root = need_shared("malf-brain-t1")
    dataset = discover_dataset(root)
    assert len(dataset.cases) == 8 and len(dataset.labelled_cases) == 8
    assert dataset.labels == {"background": 0, "csf": 1, "grey_matter": 2, "white_matter": 3}
    summary = summarize_case(dataset, dataset.cases[0])
    assert summary.problems == ()
    assert summary.label_counts is not None and set(summary.label_counts) == {0, 1, 2, 3}
    assert np.allclose(summary.spacing, 1.0, atol=1e-3)
