"""``medsaga finetune --time-budget``: durations, the total fixed from a (fake) clock, the lr schedule
fitted to it, resume keeping the total, and the input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsaga.errors import InputError
from medsaga.optim import warmup_poly_lr
from medsaga.train.finetune import FinetuneOptions, finetune, options_from_run
from medsaga.train.time_budget import PROBE_RAMP_STEPS, StepBudget, parse_duration, steps_for_budget
from tests.cli_helpers import medsaga
from tests.reporters import Interrupt, QuietReporter
from tests.train_helpers import FakeClock, tiny_options


@pytest.mark.parametrize("text, seconds", [("20m", 1200), ("90s", 90), ("1h30m", 5400), ("600", 600),
                                           ("1h", 3600), ("2.5m", 150), ("1m30s", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "20 minutes", "m", "-5", "0", "1x", "h30"])
def test_bad_durations_are_input_errors(text: str) -> None:
    with pytest.raises(InputError, match="--time-budget"):
        parse_duration(text)


def test_budget_fixes_total_from_measured_steps() -> None:
    clock = FakeClock(setup=10.0, tick=2.0)  # 10 s before the first step, then 2 s a step
    budget = StepBudget(100.0, warmup_fraction=0.1, clock=clock, probe_steps=4)
    budget.steps_begin()
    assert [budget.step_done(n) for n in (1, 2, 3)] == [None, None, None]
    total = budget.step_done(4)
    # 18 s spent (10 + 4 x 2), 3 s reserve: 79 s left, 39 more steps of 2 s.
    assert total == 4 + 39 and budget.warmup_steps == 4
    assert budget.setup_seconds == 10.0 and budget.seconds_per_step() == 2.0
    assert budget.step_done(5) is None and budget.total_steps == 43  # fixed once
    # The schedule after the probe is warmup_poly_lr's for 43 steps, which ends at 0 at the last step.
    reference = warmup_poly_lr(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), 43, 4).lr_lambdas[0]
    assert [budget.lr_factor(t) for t in range(4, 44)] == [reference(t) for t in range(4, 44)]
    assert budget.lr_factor(43) == 0.0


def test_slow_steps_end_the_probe_early() -> None:
    # 40 s steps against a 300 s budget: five of them would spend two thirds of it on the probe.
    budget = StepBudget(300.0, clock=FakeClock(setup=20.0, tick=40.0), probe_steps=5)
    budget.steps_begin()
    assert budget.step_done(1) is not None  # 40 s >= 10 % of 300 s: fixed after one step
    # 60 s spent, 9 s reserve: 231 s left, 5 more steps of 40 s.
    assert budget.total_steps == 1 + 5 and budget.seconds_per_step() == 40.0


def test_probe_learning_rate_is_a_small_ramp() -> None:
    budget = StepBudget(60.0, clock=FakeClock(0.0, 1.0))
    assert budget.lr_factor(0) == 1 / PROBE_RAMP_STEPS and budget.lr_factor(4) == 5 / PROBE_RAMP_STEPS


def test_spent_budget_stops_at_the_probe() -> None:
    assert steps_for_budget(60.0, elapsed_seconds=70.0, seconds_per_step=1.0, steps_done=5, reserve_seconds=1) == 5
    assert steps_for_budget(60.0, elapsed_seconds=10.0, seconds_per_step=1.0, steps_done=5, reserve_seconds=2) == 53


def test_budgeted_run_trains_the_resolved_steps_and_ends_the_schedule(tmp_path: Path) -> None:
    # Every clock reading advances 0.5 s; the loop reads it once per step.
    clock = FakeClock(setup=5.0, tick=0.5)
    run = tmp_path / "run"
    outcome = finetune(tiny_options(run, steps=None, time_budget="20s", checkpoint_every=100, decoder_warmup=0.0), QuietReporter(),
                       clock=clock)
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "report.json").read_text())
    # 5 s setup + 4 probe steps of 0.5 s (their 2 s are 10 % of the budget: the probe ends there) = 7 s;
    # 20 s less 0.6 s reserve leaves 12.4 s: 24 more steps.
    resolved = 4 + 24
    assert config["time_budget"]["resolved_steps"] == resolved == report["time_budget"]["resolved_steps"]
    assert config["time_budget"]["seconds"] == 20.0 and config["training"]["steps"] == resolved
    assert report["steps"] == resolved == outcome.result.steps
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, resolved + 1))
    # The lr recorded after the last step is the schedule's end (0), and it decays to it.
    base = lines[10]["lr"] / config["training"]["lr"]
    assert lines[-1]["lr"] == 0.0 and 0 < lines[-2]["lr"] < lines[10]["lr"] and 0 < base <= 1


def test_resume_keeps_the_resolved_steps(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupt):
        finetune(tiny_options(run, steps=None, time_budget="20s", checkpoint_every=10, decoder_warmup=0.0), QuietReporter(stop_at=14),
                 clock=FakeClock(setup=5.0, tick=0.5))
    assert json.loads((run / "config.json").read_text())["time_budget"]["resolved_steps"] == 28
    # A resumed run does not time anything again: a clock that has run out changes nothing.
    outcome = finetune(options_from_run(run), QuietReporter(), resume=True, clock=FakeClock(setup=1e6, tick=1e6))
    assert outcome.result.first_step == 10 and outcome.result.steps == 28
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 29)) and lines[-1]["lr"] == 0.0


def test_budget_with_steps_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--time-budget"):
        finetune(tiny_options(tmp_path / "run", time_budget="1m"), QuietReporter())
    assert not (tmp_path / "run").exists()


def test_cli_budget_errors_are_one_line(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parents[1] / "sample_data"
    for extra in (["--time-budget", "soon"], ["--time-budget", "20m", "--epochs", "2"]):
        result = medsaga("finetune", str(sample), "--model", "tiny", "--out", str(tmp_path / "run"), *extra)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith("error: ") and "--time-budget" in lines[0], lines[0]


def test_cpu_clock_counts_this_process_cpu_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--time-budget-clock cpu: the budget reads time.process_time (a fake one here), not the wall clock."""
    import time

    monkeypatch.setattr(time, "process_time", FakeClock(setup=5.0, tick=0.5))
    run = tmp_path / "run"
    wall = FakeClock(setup=1e6, tick=1e6)  # the wall clock would have spent the budget at once
    finetune(tiny_options(run, steps=None, time_budget="20s", time_budget_clock="cpu", checkpoint_every=100, decoder_warmup=0.0),
             QuietReporter(), clock=wall)
    config = json.loads((run / "config.json").read_text())
    assert config["time_budget"]["clock"] == "cpu" and config["time_budget"]["resolved_steps"] == 28
    with pytest.raises(InputError, match="--time-budget-clock must be wall or cpu, got 'gpu'"):
        finetune(tiny_options(tmp_path / "other", steps=None, time_budget="20s", time_budget_clock="gpu"),
                 QuietReporter())
