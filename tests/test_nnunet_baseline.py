"""benchmarks/baselines/nnunet.py: the nnU-Net v2 contender trains on K < 5 cases (its own split of
exactly those cases), stops at its budget, and writes label maps on the input grid; it refuses a
test case that is also a training case. Skipped where nnunetv2 (the ``benchmark`` extra) is absent."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nnunetv2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))

import nnunet  # noqa: E402
import quality_vs_baselines as qvb  # noqa: E402
from tests.dataset_factory import LABELS, phantom, write_nifti  # noqa: E402

CASES = ("case_000", "case_001", "case_002")


def _dataset(root: Path) -> Path:
    """Three phantoms of 40 x 32 x 6 voxels in nnU-Net layout: big enough for nnU-Net to plan a
    3-stage network (at 16 x 12 it plans 2 stages, and its deep-supervision weights are 0 / 0)."""
    affine = np.array([[0.0, 0.0, 2.0, -7.0], [-0.9, 0.0, 0.0, 30.0], [0.0, 1.1, 0.0, -12.0], [0, 0, 0, 1]])
    for index, case in enumerate(CASES):
        image, label = phantom(shape=(40, 32, 6), seed=index)
        write_nifti(root / "imagesTr" / f"{case}_0000.nii.gz", image, affine)
        write_nifti(root / "labelsTr" / f"{case}.nii.gz", label, affine)
    spec = {"name": "Test", "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": len(CASES),
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(spec, indent=2))
    return root


def test_nnunet_trains_on_one_case_and_its_labels_land_on_the_input_grid(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    run = tmp_path / "k1" / "nnunet"
    image = data / "imagesTr" / f"{CASES[2]}_0000.nii.gz"
    # Through the benchmark's own glue; a budget of 2 CPU-seconds is spent by the preprocessing, so
    # only the timed iterations train.
    timings, trained = qvb._BASELINES["nnunet"].run(data, [CASES[0]], run, [image], data / "labelsTr", 2.0, 0,
                                                    "test K=1 nnunet", "cpu")
    assert set(timings) >= {"train", "predict", "evaluate"}
    assert trained["nnunetv2"] == "2.5.2" and trained["configuration"] == "2d"
    assert 1 <= trained["iterations"] <= 5 and trained["iterations"] == trained["time_budget"]["resolved_steps"]
    assert trained["prediction"]["mirroring"] is False and trained["preprocessing_seconds"] > 0
    assert len(trained["patch_size"]) == 2 and trained["batch_size"] >= 1
    # nnU-Net's split is exactly the training cases, and so is its raw dataset.
    preprocessed = next((run / "nnUNet_preprocessed").glob("Dataset999_*"))
    assert json.loads((preprocessed / "splits_final.json").read_text()) == [{"train": [CASES[0]], "val": [CASES[0]]}]
    raw = next((run / "nnUNet_raw").glob("Dataset999_*"))
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"{CASES[0]}_0000.nii.gz"]
    assert json.loads((raw / "dataset.json").read_text())["numTraining"] == 1
    # The label map lies on the input's grid.
    written, source = nib.load(run / "predictions" / f"{CASES[2]}.nii.gz"), nib.load(image)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert sorted(p.name for p in (run / "predictions").iterdir()) == [f"{CASES[2]}.nii.gz"]
    assert (run / "evaluation" / "metrics.json").is_file()


def test_nnunet_refuses_a_test_case_that_is_also_a_training_case(tmp_path: Path) -> None:
    def never(*args: object, **kwargs: object) -> dict:
        raise AssertionError("no command may run")

    data = tmp_path / "data"
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="case_001"):
        nnunet.run(data, ["case_000", "case_001"], run, [data / "imagesTr" / "case_001_0000.nii.gz"],
                   data / "labelsTr", 2.0, 0, "test", "cpu", timed_commands=never,
                   check_disjoint=qvb.check_disjoint)
    with pytest.raises(ValueError, match="case_000"):  # and through the benchmark's glue
        qvb._BASELINES["nnunet"].run(data, ["case_000"], run, [data / "imagesTr" / "case_000_0000.nii.gz"],
                                     data / "labelsTr", 2.0, 0, "test", "cpu")
    assert not run.exists()


def test_unavailable_is_none_when_nnunetv2_imports() -> None:
    assert nnunet.unavailable() is None
    assert nnunet.case_name(Path("/x/CHAOS_T2_01_0000.nii.gz")) == "CHAOS_T2_01"
