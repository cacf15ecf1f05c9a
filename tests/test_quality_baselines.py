"""benchmarks/quality_vs_baselines.py: the fixed splits, the refusal to score a training case, the
tables from records; the U-Net baseline's label maps land on the input grid."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "benchmarks" / "baselines"))

import quality_vs_baselines as qvb  # noqa: E402
import unet  # noqa: E402
from tests.dataset_factory import make_nnunet  # noqa: E402


def test_fixed_splits_are_disjoint_and_nested() -> None:
    for name, task in qvb.TASKS.items():
        assert len(task.pool) == 5 and len(task.test) == 3, name
        assert not set(task.pool) & set(task.test), name


def test_runner_refuses_a_test_case_that_is_also_a_training_case(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CHAOS_T2_10"):
        qvb.check_disjoint(["CHAOS_T2_01", "CHAOS_T2_10"], qvb.TASKS["chaos-mr-abdomen"].test)
    qvb.check_disjoint(["CHAOS_T2_01"], qvb.TASKS["chaos-mr-abdomen"].test)  # disjoint: no error
    overlapping = qvb.Task(("A", "B"), ("B", "C"))
    original = dict(qvb.TASKS)
    qvb.TASKS["overlap"] = overlapping
    try:
        with pytest.raises(ValueError, match="B"):
            qvb.main(["--tasks", "overlap", "--shots", "1", "--records", str(tmp_path / "records"),
                      "--out", str(tmp_path / "out")])
        assert not (tmp_path / "out").exists()  # refused before any work
    finally:
        qvb.TASKS.clear()
        qvb.TASKS.update(original)


def _record(contender: str, dice: float) -> dict:
    return {"task": "chaos-mr-abdomen", "k": 2, "contender": contender, "budget_seconds": 600.0,
            "classes": {"liver": {"dice": dice, "hd95": 10.0, "nsd": 0.5}, "spleen": {"dice": None, "hd95": None,
                                                                                     "nsd": None}},
            "mean_dice": dice / 2, "trained": {"steps": 100}, "wall_seconds": {"train": 598.0},
            "cpu_seconds_all_commands": 1200.0}


def test_table_only_prints_kept_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "records"
    records.mkdir()
    for contender, dice in (("unet", 0.5), ("medsaga-default", 0.7)):
        record = _record(contender, dice)
        if contender == "medsaga-default":  # a run with a decoder warm-up: its steps get their column
            record["trained"]["decoder_warmup_steps"] = 40
        (records / f"chaos-mr-abdomen-k2-{contender}.json").write_text(json.dumps(record))
    assert qvb.main(["--table-only", "--records", str(records), "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert "| 2 | unet | 0.500 | – | 0.250 | 10.0 | – | 100 | 598 | 1,200 |" in table
    assert "| 2 | medsaga-default | 0.700 | – | 0.350 | 10.0 | 40 | 100 | 598 | 1,200 |" in table
    assert "| chaos-mr-abdomen | 2 | 0.250 | 0.350 | – | – |" in table


def test_unet_labels_land_on_the_input_grid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unet, "PATCH", 48)  # the phantom is 16 x 12 in-plane; 224 px would only cost time
    monkeypatch.setattr(unet, "BATCH", 2)
    data = make_nnunet(tmp_path / "data", n_cases=2)
    cases = sorted(p.name.removesuffix("_0000.nii.gz") for p in (data / "imagesTr").glob("*_0000.nii.gz"))
    # A budget already spent by the reading still trains the first, timed step, and stops there.
    report = unet.train(data, cases[:1], tmp_path / "run", budget_seconds=1e-3, seed=0)
    assert report["steps"] == 1 and report["time_budget"]["resolved_steps"] == 1
    image = data / "imagesTr" / f"{cases[1]}_0000.nii.gz"
    unet.predict(tmp_path / "run", [image], tmp_path / "predictions")
    written = nib.load(tmp_path / "predictions" / f"{cases[1]}.nii.gz")
    source = nib.load(image)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
