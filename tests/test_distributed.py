"""torchrun on one CPU: DDP training (gloo, 2 processes) equals the single-process run, a killed DDP
run resumes, cohort prediction writes each case once, and two torchrun "nodes" on loopback train
as one job. Each torchrun launch costs ~10 s of process start-up, so one launch runs many runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from medsaga.train.finetune import finetune, options_from_run
from tests.reporters import QuietPredictReporter, QuietReporter
from tests.train_helpers import tiny_options

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_worker.py"
# GaLore plain and layer-wise (the lean default), LoRA, and the adapter (BatchNorm in what trains,
# and the embedding cache built in shares); batch 4 = 2 slices per rank.
CASES: dict[str, dict[str, Any]] = {
    "galore-plain": {"method": "galore", "method_options": {"update_proj_gap": 2, "layerwise": False}},
    "galore-layerwise": {"method": "galore", "method_options": {"update_proj_gap": 2}},
    "lora": {"method": "lora", "method_options": {}},
    "adapter": {"method": "adapter", "method_options": {"width": 32}},
}


def _env() -> dict[str, str]:
    # One thread per process: two ranks on a 2-core machine.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _options(out: Path, case: str) -> dict[str, Any]:
    options = tiny_options(out, batch_size=4, **CASES[case])
    recorded = {key: getattr(options, key) for key in options.__dataclass_fields__}
    return {**recorded, "data_dir": str(options.data_dir), "out": str(out), "cases": list(options.cases)}


def torchrun(*arguments: str, nproc: int = 2, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *arguments]
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, cwd=ROOT, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result


def _jobs(path: Path, jobs: list[dict[str, Any]]) -> str:
    path.write_text(json.dumps(jobs))
    return str(path)


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case of CASES on 2 processes, plus a galore-layerwise run killed after step 4 (its
    step-3 checkpoint on disk), in one torchrun launch."""
    folder = tmp_path_factory.mktemp("ddp")
    jobs = [{"options": _options(folder / case, case)} for case in CASES]
    jobs.append({"options": _options(folder / "killed", "galore-layerwise"), "kill_at": 5})
    result = torchrun(str(WORKER), _jobs(folder / "jobs.json", jobs), check=False)
    assert result.returncode != 0, "the last job kills rank 0: torchrun must report the failure"
    for case in CASES:
        assert (folder / case / "trained.safetensors").is_file(), result.stderr[-4000:]
    return folder


def _assert_same_run(expected_dir: Path, actual_dir: Path, *, exact: bool) -> None:
    expected = load_file(str(expected_dir / "trained.safetensors"))
    actual = load_file(str(actual_dir / "trained.safetensors"))
    assert expected.keys() == actual.keys()
    if exact:
        assert all(torch.equal(value, actual[name]) for name, value in expected.items())
    else:
        # Reordered sums round differently, and Adam divides each gradient by its own size, so a
        # tiny gradient's rounding can move its weight by up to lr per step: compare all weights
        # together. Measured relative L2 distances to the single-process run: galore 3.8e-4 (its
        # SVD basis turns with the gradient), lora 1.8e-5, adapter 1.2e-7; training on the wrong
        # batch (each rank's half alone) instead gives 0.04, 0.09 and 2.9e-3.
        difference = sum(((value.double() - actual[name].double()) ** 2).sum() for name, value in expected.items())
        size = sum((value.double() ** 2).sum() for value in expected.values())
        assert (difference / size).sqrt() < 1.5e-3
    losses = [[json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
              for folder in (expected_dir, actual_dir)]
    assert len(losses[0]) == len(losses[1]) == 6
    if exact:
        assert losses[0] == losses[1]
    else:
        torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_training_equals_single_process_training(ddp_runs: Path, tmp_path: Path, case: str) -> None:
    single = tmp_path / "single"
    finetune(tiny_options(single, batch_size=4, **CASES[case]), QuietReporter())
    _assert_same_run(single, ddp_runs / case, exact=False)
    report = json.loads((ddp_runs / case / "report.json").read_text())
    ranks = report["distributed"]["ranks"]
    assert report["distributed"]["world_size"] == 2 and [r["rank"] for r in ranks] == [0, 1]
    assert all(r["peak_memory"]["peak_above_baseline_bytes"] > 0 and r["tensor_peak"]["bytes"] > 0 for r in ranks)
    assert report["slices_seen"] == 6 * 4  # global slices: the throughput is the job's, not a rank's
    if case == "adapter":
        assert report["embedding_cache"]["entries"] > 0


def test_killed_ddp_run_resumes_as_the_uninterrupted_run(ddp_runs: Path) -> None:
    killed = ddp_runs / "killed"
    assert not (killed / "trained.safetensors").exists()
    result = torchrun("-m", "medsaga", "finetune", "--resume", str(killed))
    assert "step 4/6" in result.stderr and "step 3/6" not in result.stderr  # continued after the step-3 checkpoint
    assert "2 (gloo); peak memory rank 0" in result.stdout and result.stdout.count("medsaga finetune:") == 1
    _assert_same_run(ddp_runs / "galore-layerwise", killed, exact=True)


def test_nproc_checks_input_before_launching(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "medsaga", "finetune", str(ROOT / "sample_data"), "--model", "tiny",
                             "--batch-size", "3", "--nproc", "2", "--out", str(tmp_path / "run")],
                            env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --batch-size 3 is the global batch and must be divisible by the 2 processes"]
    assert not (tmp_path / "run").exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_loopback_train_as_one_job(ddp_runs: Path, tmp_path: Path) -> None:
    """Two torchrun agents, one process each, meeting through the c10d rendezvous on 127.0.0.1."""
    jobs = _jobs(tmp_path / "jobs.json", [{"options": _options(tmp_path / "run", "lora")}])
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
                               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=medsaga-test",
                               str(WORKER), jobs], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), outputs
    _assert_same_run(ddp_runs / "lora", tmp_path / "run", exact=False)
    assert json.loads((tmp_path / "run" / "report.json").read_text())["distributed"]["world_size"] == 2


def _labels(folder: Path) -> dict[str, Any]:
    import nibabel as nib

    return {path.name: np.asarray(nib.load(path).dataobj) for path in sorted(folder.glob("*.nii.gz"))}


def test_cohort_prediction_writes_each_case_once_and_equals_single_process(ddp_runs: Path, tmp_path: Path) -> None:
    from medsaga.predict.pipeline import PredictOptions, predict

    images = sorted((ROOT / "sample_data" / "imagesTr").glob("phantom_00[1-5]_0000.nii.gz"))
    broken = tmp_path / "inputs" / "broken_0000.nii.gz"  # a cohort has its corrupt file
    broken.parent.mkdir()
    broken.write_bytes(b"not a NIfTI file")
    inputs = [*map(str, images), str(broken)]
    run = ddp_runs / "lora"
    single = predict(PredictOptions(run_dir=run, inputs=tuple(map(Path, inputs)), out=tmp_path / "single",
                                    device="cpu"), QuietPredictReporter())
    assert [f.case_id for f in single.failures] == ["broken"] and len(single.results) == 5

    cohort = tmp_path / "cohort"
    options = {"run_dir": str(run), "inputs": inputs, "out": str(cohort), "device": "cpu"}
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    torchrun(str(WORKER), _jobs(tmp_path / "jobs.json", [
        {"predict": options, "outcome": str(first)},
        # An interrupted cohort: phantom_004's output is gone; the rerun predicts only what is missing.
        {"predict": {**options, "skip_existing": True}, "delete": [str(cohort / "phantom_004.nii.gz")],
         "outcome": str(second)}]))
    outcome = json.loads(first.read_text())
    cases = [case for case, _ in outcome["results"]]
    assert sorted(cases) == sorted(set(cases)) == [f"phantom_00{n}" for n in range(1, 6)]  # each written once
    assert {rank for _, rank in outcome["results"]} == {0, 1} and outcome["world_size"] == 2
    assert [case for case, _ in outcome["failures"]] == ["broken"]  # reported; the others went on
    resumed = json.loads(second.read_text())
    assert [case for case, _ in resumed["results"]] == ["phantom_004"]
    assert sorted(resumed["skipped"]) == ["phantom_001", "phantom_002", "phantom_003", "phantom_005"]
    expected, actual = _labels(tmp_path / "single"), _labels(cohort)
    assert expected.keys() == actual.keys() and len(actual) == 5
    assert all(np.array_equal(expected[name], actual[name]) for name in expected)
