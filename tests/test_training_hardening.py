"""Training that refuses nonsense: non-finite losses and weights, early and tampered checkpoints.

Issue 25, sections 3 and 4: a diverged run stops with one line and keeps its last good checkpoint
(no NaN is ever written), the first checkpoint comes after step 1 so a run killed early can be
resumed, and a resume state that is missing, damaged or not the run's is one line naming the file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsaga.errors import InputError
from medsaga.option_checks import check_fraction, check_int, check_positive, check_real
from medsaga.train import loop
from medsaga.train.finetune import finetune, options_from_run
from medsaga.train.loop import LoopSettings
from tests.cli_helpers import assert_refused, medsaga_in_process
from tests.data_paths import SAMPLE
from tests.reporters import Interrupt, QuietReporter
from tests.train_helpers import tiny_options

# The tiny run as a command line: 4 steps, checkpoints after steps 1 and 3.
TINY_CLI = ("finetune", str(SAMPLE), "--model", "tiny", "--shots", "2", "--image-size", "64", "--steps", "4",
            "--batch-size", "2", "--checkpoint-every", "3", "--seed", "3")


def _assert_all_finite(path: Path) -> None:
    tensors = load_file(str(path))
    assert tensors
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            assert bool(torch.isfinite(tensor).all()), name


def _metric_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_checkpoints_come_after_the_first_step_then_every_checkpoint_every() -> None:
    def due(steps: int, every: int) -> list[int]:
        settings = LoopSettings(steps=steps, batch_size=1, checkpoint_every=every)
        return [step + 1 for step in range(steps) if loop._checkpoint_due(settings, step)]

    assert due(10, 3) == [1, 3, 6, 9]  # the last step's checkpoint is written after the loop
    assert due(10, 1) == list(range(1, 10))
    assert due(10, 0) == []  # 0: only at the end, as before
    assert due(1, 3) == []  # a one-step run: its only checkpoint is the final one


def test_non_finite_loss_stops_the_run_with_one_line_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_loss = loop.segmentation_loss
    calls = []

    def loss_nan_at_step_2(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        loss = real_loss(logits, labels)
        return loss * float("nan") if len(calls) == 2 else loss  # one forward per step here

    monkeypatch.setattr(loop, "segmentation_loss", loss_nan_at_step_2)
    run = tmp_path / "run"
    code, stderr = medsaga_in_process(capsys, monkeypatch, *TINY_CLI, "--out", str(run))
    line = assert_refused(code, stderr, f"error: step 2: loss is nan; the last good checkpoint is at step 1 in "
                                        f"{run / 'checkpoint'}; lower --lr")
    assert "--force" in line
    # Nothing of the diverged step was written: no trained weights, the checkpoint of step 1, finite.
    assert not (run / "trained.safetensors").exists() and not (run / "report.json").exists()
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 1
    _assert_all_finite(run / "checkpoint" / "state.safetensors")
    assert _metric_steps(run) == [1]


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finite loss with an overflowing update: the weights are checked before each write."""
    real_step = loop._step

    def poisoning_step(forward, model, *args):  # type: ignore[no-untyped-def]
        loss = real_step(forward, model, *args)
        if args[-1] == 1:  # the 0-based step: the second
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).fill_(float("inf"))
        return loss

    monkeypatch.setattr(loop, "_step", poisoning_step)
    run = tmp_path / "run"
    with pytest.raises(InputError, match=r"step 2: loss is [0-9.]+ but \d+ trained tensor\(s\) are not finite .*"
                                         r"the last good checkpoint is at step 1"):
        finetune(tiny_options(run, steps=4, checkpoint_every=2), QuietReporter())
    assert not (run / "trained.safetensors").exists()
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 1
    _assert_all_finite(run / "checkpoint" / "state.safetensors")


def test_a_run_killed_before_its_first_checkpoint_says_how_to_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        finetune(tiny_options(run), QuietReporter(stop_at=1))  # killed during step 1, before any checkpoint
    assert (run / "config.json").is_file() and not (run / "checkpoint").exists()
    code, stderr = medsaga_in_process(capsys, monkeypatch, "finetune", "--resume", str(run))
    assert_refused(code, stderr, f"error: {run}: has no checkpoint yet")
    assert "start it again with the same command and --force" in stderr


def test_a_run_killed_after_its_first_step_resumes_from_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        finetune(tiny_options(run, checkpoint_every=100), QuietReporter(stop_at=2))
    assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 1
    reporter = QuietReporter()
    resumed = finetune(options_from_run(run), reporter, resume=True)
    assert reporter.first_step == 1 and resumed.result.first_step == 1
    assert _metric_steps(run) == [1, 2, 3, 4, 5, 6]
    _assert_all_finite(run / "trained.safetensors")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-step run killed after step 2: its checkpoint is the one written after step 1."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.raises(Interrupt):
        finetune(tiny_options(run), QuietReporter(stop_at=2))
    return run


def _set_json(key: str, value: object):  # type: ignore[no-untyped-def]
    def tamper(path: Path) -> None:
        document = json.loads(path.read_text())
        document[key] = value
        path.write_text(json.dumps(document))
    return tamper


def _drop_json(key: str):  # type: ignore[no-untyped-def]
    def tamper(path: Path) -> None:
        document = json.loads(path.read_text())
        del document[key]
        path.write_text(json.dumps(document))
    return tamper


TAMPERED = {
    "tensors-not-safetensors": ("state.safetensors", lambda path: path.write_bytes(b"PK\x03\x04 a zip, not tensors"),
                                "not a readable checkpoint"),
    "tensors-empty": ("state.safetensors", lambda path: path.write_bytes(b""), "not a readable checkpoint"),
    "json-invalid": ("state.json", lambda path: path.write_text("{\"step\": 1,"), "not a readable checkpoint state"),
    "json-not-an-object": ("state.json", lambda path: path.write_text("[1, 2]"), "not a medsaga checkpoint state"),
    "json-missing-keys": ("state.json", _drop_json("param_groups"), "not a medsaga checkpoint state: no param_groups"),
    "json-step-text": ("state.json", _set_json("step", "1"), "step must be a whole number of at least 0, got '1'"),
    "json-step-beyond-the-run": ("state.json", _set_json("step", 99), "step 99 is beyond the run's 6 steps"),
    "json-step-other-than-the-tensors": ("state.json", _set_json("step", 4),
                                   "do not belong together"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_resume_state_is_one_line_naming_the_file(
        case: str, stopped_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    name, tamper, fragment = TAMPERED[case]
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    tamper(run / "checkpoint" / name)
    code, stderr = medsaga_in_process(capsys, monkeypatch, "finetune", "--resume", str(run))
    line = assert_refused(code, stderr, fragment)
    assert str(run / "checkpoint") in line, line
    assert _metric_steps(run) == [1, 2]  # refused before anything was touched


def test_an_optimizer_state_that_does_not_fit_is_one_line(stopped_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    _set_json("param_groups", [])(run / "checkpoint" / "state.json")
    with pytest.raises(InputError, match="the optimizer state does not fit this run") as caught:
        finetune(options_from_run(run), QuietReporter(), resume=True)
    assert caught.value.path == run / "checkpoint"


def test_numeric_checks_name_the_option_and_refuse_non_finite_values() -> None:
    assert check_positive("--lr", 1e-4) == 1e-4
    assert check_fraction("--warmup", 0.0) == 0.0
    assert check_int("--seed", 0, at_least=0) == 0
    for bad in (float("nan"), float("inf"), -1.0, 0.0, True):
        with pytest.raises(InputError, match=r"^--lr must be a finite number above 0, got "):
            check_positive("--lr", bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^--warmup must be a finite number in \[0, 1\), got 1"):
        check_fraction("--warmup", 1)
    with pytest.raises(InputError, match=r"^--x must be a finite number in \(0, 2\], got 3"):
        check_real("--x", 3, above=0, at_most=2)
    with pytest.raises(InputError, match=r"^--n must be an integer in \[1, 4\], got 2.5"):
        check_int("--n", 2.5, at_least=1, at_most=4)  # type: ignore[arg-type]
