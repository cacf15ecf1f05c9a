"""The command line as a user meets it: exit codes, one-line errors, inspect's output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import assert_one_line_error, medsaga
from tests.data_paths import ROOT, need_shared
from tests.dataset_factory import make_nnunet, phantom, write_nifti


def test_help_lists_commands() -> None:
    result = medsaga("--help")
    assert result.returncode == 0 and "inspect" in result.stdout


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.nii.gz"
    assert_one_line_error(medsaga("inspect", missing), missing, "no such file or folder")


def test_truncated_nifti(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    image_path = root / "imagesTr" / "case_001_0000.nii.gz"
    data = image_path.read_bytes()
    image_path.write_bytes(data[: len(data) // 2])
    result = medsaga("inspect", root)
    assert_one_line_error(result, image_path, "case case_001", "NIfTI")
    assert "case_000" in result.stdout and "ok" in result.stdout  # the good case is still listed
    assert_one_line_error(medsaga("inspect", image_path), image_path, "NIfTI")


def test_label_on_a_different_grid(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=2)
    _, label = phantom()
    label_path = write_nifti(root / "labelsTr" / "case_000.nii.gz", label, np.diag([1.0, 1.0, 2.5, 1.0]))
    result = medsaga("inspect", root)
    assert_one_line_error(result, label_path, "case case_000", "label grid differs from the image", "spacing")


def test_undeclared_label_value(tmp_path: Path) -> None:
    root = make_nnunet(tmp_path / "ds", n_cases=1)
    spec = json.loads((root / "dataset.json").read_text())
    spec["labels"] = {"background": 0, "organ": 1}
    (root / "dataset.json").write_text(json.dumps(spec))
    result = medsaga("inspect", root)
    assert_one_line_error(result, root / "labelsTr" / "case_000.nii.gz", "label values [2] are not declared")


def test_folder_with_no_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no scans here")
    assert_one_line_error(medsaga("inspect", tmp_path), tmp_path, "no images found")


def test_dicom_folder_with_two_series(tmp_path: Path) -> None:
    three_slice = need_shared("ct-dicom-seg", "ct-3slice")
    twenty_slice = need_shared("ct-dicom-series", "dicom")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for source in (three_slice, twenty_slice):
        for file in source.iterdir():
            shutil.copy(file, mixed / f"{source.name}_{file.name}")
    result = medsaga("inspect", mixed)
    assert_one_line_error(result, mixed, "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1")
    assert "--series" in result.stderr or "series_uid" in result.stderr or "SeriesInstanceUID" in result.stderr
    chosen = medsaga("inspect", mixed, "--series", "1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1")
    assert chosen.returncode == 0, chosen.stderr
    assert "512 × 512 × 3" in chosen.stdout


def test_inspect_malf_lists_8_cases_with_labels_0_to_3() -> None:
    root = need_shared("malf-brain-t1")
    result = medsaga("inspect", root)
    assert result.returncode == 0, result.stderr
    assert "8 cases" in result.stdout and "8 labelled" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "MALF_" in line]
    assert [row.split("│")[1].strip() for row in rows] == [f"MALF_{1000 + i}" for i in range(8)]
    header = next(line for line in result.stdout.splitlines() if "case" in line and "shape" in line)
    assert [cell.strip() for cell in header.split("┃")[6:10]] == ["0", "1", "2", "3"]
    assert "0 background, 1 csf, 2 grey_matter, 3 white_matter" in result.stdout.replace("\n", " ")
    assert all(row.split("│")[-2].strip() == "ok" for row in rows)


def test_inspect_sample_data() -> None:
    result = medsaga("inspect", ROOT / "sample_data")
    assert result.returncode == 0, result.stderr
    assert sum("phantom_" in line for line in result.stdout.splitlines()) == 8


def test_method_options_parse_numbers_booleans_and_comma_lists() -> None:
    from cli.finetune_cmd import _parse_method_options
    from medsaga.errors import InputError

    parsed = _parse_method_options(["rank=4", "scale=0.5", "layerwise=true", "targets=q,v", "svd=full"])
    assert parsed == {"rank": 4, "scale": 0.5, "layerwise": True, "targets": ("q", "v"), "svd": "full"}
    with pytest.raises(InputError, match="KEY=VALUE"):
        _parse_method_options(["rank"])
