"""The decoder warm-up (``--decoder-warmup``): its two phases, their record, resume in either phase,
the auto rule and the option's checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsaga.errors import InputError
from medsaga.io.paths import foreign_entry
from medsaga.methods import create_method
from medsaga.train.decoder_warmup import (DEFAULT_FRACTION, MIN_AUTO_STEPS, WARMUP_FOLDER, check_warmup_option,
                                          plan_with_warmup, resolve_fraction, split_steps)
from medsaga.train.finetune import finetune, options_from_run
from tests.cli_helpers import medsaga
from tests.data_paths import SAMPLE
from tests.reporters import Interrupt, QuietReporter
from tests.train_helpers import FakeClock, facts, tiny_options

DECODER_PREFIX = "sam.mask_decoder."


class StopAfterCalls(QuietReporter):
    """Stops the run at its ``calls``-th step, counted over both phases (step numbers restart)."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.calls, self.seen = calls, 0

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None:
        self.seen += 1
        if self.seen == self.calls:
            raise Interrupt(step)
        super().on_step(step, loss, lr, slices_per_second)


def warm_options(out: Path, **changes):
    return tiny_options(out, steps=8, checkpoint_every=2, decoder_warmup=0.5, **changes)


def steps_in(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_the_decoder_trains_first_then_the_method_from_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    reporter = QuietReporter()
    outcome = finetune(warm_options(run), reporter)
    assert steps_in(run / WARMUP_FOLDER / "metrics.jsonl") == [1, 2, 3, 4]
    assert steps_in(run / "metrics.jsonl") == [1, 2, 3, 4]
    config = json.loads((run / "config.json").read_text())
    warmup = config["decoder_warmup"]
    assert warmup["fraction"] == 0.5 and warmup["method"] == "decoder" and warmup["training"]["steps"] == 4
    assert warmup["embedding_cache"]["enabled"] and warmup["training"]["cache_views"] >= 1
    assert config["training"]["steps"] == 4 and config["options"]["decoder_warmup"] == 0.5
    report = json.loads((run / "report.json").read_text())
    assert report["decoder_warmup"]["steps"] == 4 and report["steps"] == 4 and report["method"] == "galore"
    assert any("decoder warm-up" in message for message in reporter.messages)

    # The warm-up trained the decoder alone; the method then went on from that decoder and trained
    # the encoder too (GaLore: its trained state holds the encoder's weights).
    warmed = load_file(str(run / WARMUP_FOLDER / "trained.safetensors"))
    assert warmed and all(name.startswith(DECODER_PREFIX) for name in warmed)
    final = load_file(str(run / "trained.safetensors"))
    assert any(name.startswith("sam.image_encoder.") for name in final)
    assert set(warmed) <= set(final)
    assert any(not torch.equal(warmed[name], final[name]) for name in warmed)
    baseline = finetune(tiny_options(tmp_path / "plain", steps=8, checkpoint_every=2, decoder_warmup=0.0),
                        QuietReporter())
    plain = load_file(str(tmp_path / "plain" / "trained.safetensors"))
    assert not (tmp_path / "plain" / WARMUP_FOLDER).exists()
    assert any(not torch.equal(plain[name], final[name]) for name in warmed)
    assert baseline.report["decoder_warmup"] is None

    # The phase's folder is medsaga's: --force may replace the run.
    assert foreign_entry(run, "run") is None
    finetune(warm_options(run, force=True), QuietReporter())
    assert outcome.method.name == "galore"


@pytest.mark.parametrize("stop_at_call", [3, 7], ids=["in-the-warm-up", "in-the-method-phase"])
def test_a_run_stopped_in_either_phase_resumes_to_the_uninterrupted_result(tmp_path: Path, stop_at_call: int) -> None:
    finetune(warm_options(tmp_path / "whole"), QuietReporter())
    with pytest.raises(Interrupt):
        finetune(warm_options(tmp_path / "cut"), StopAfterCalls(stop_at_call))
    assert not (tmp_path / "cut" / "trained.safetensors").exists()
    resumed = finetune(options_from_run(tmp_path / "cut"), QuietReporter(), resume=True)
    assert resumed.report["decoder_warmup"]["fraction"] == 0.5
    expected = load_file(str(tmp_path / "whole" / "trained.safetensors"))
    actual = load_file(str(tmp_path / "cut" / "trained.safetensors"))
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name
    for folder in (Path(WARMUP_FOLDER), Path()):
        whole = [json.loads(line)["loss"] for line in (tmp_path / "whole" / folder / "metrics.jsonl").read_text().splitlines()]
        cut = [json.loads(line)["loss"] for line in (tmp_path / "cut" / folder / "metrics.jsonl").read_text().splitlines()]
        assert cut == whole, folder


def test_auto_warms_up_encoder_methods_in_long_or_budgeted_runs_only() -> None:
    galore, decoder, adapter = create_method("galore"), create_method("decoder"), create_method("adapter")
    assert resolve_fraction(None, galore, steps=MIN_AUTO_STEPS, budgeted=False) == DEFAULT_FRACTION
    assert resolve_fraction(None, galore, steps=MIN_AUTO_STEPS - 1, budgeted=False) == 0.0
    assert resolve_fraction(None, galore, steps=10**9, budgeted=True) == DEFAULT_FRACTION
    assert resolve_fraction(None, create_method("lora"), steps=500, budgeted=False) == DEFAULT_FRACTION
    # Methods that already train from the cache have no encoder phase to warm up for.
    assert resolve_fraction(None, decoder, steps=500, budgeted=True) == 0.0
    assert resolve_fraction(None, adapter, steps=500, budgeted=False) == 0.0
    assert resolve_fraction(0.0, galore, steps=500, budgeted=False) == 0.0
    assert resolve_fraction(0.25, galore, steps=5, budgeted=False) == 0.25
    assert split_steps(8, 0.5) == (4, 4) and split_steps(10, 0.01) == (1, 9) and split_steps(10, 0.99) == (9, 1)
    assert split_steps(1, 0.5) == (0, 1) and split_steps(300, 0.0) == (0, 300)


@pytest.mark.parametrize("value", [1.0, -0.1, math.nan, math.inf, True])
def test_the_fraction_is_checked(value: float) -> None:
    with pytest.raises(InputError, match="--decoder-warmup"):
        check_warmup_option(value, create_method("galore"))


def test_a_method_that_trains_from_the_cache_refuses_a_warmup(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="decoder"):
        check_warmup_option(0.3, create_method("decoder"))
    check_warmup_option(0.0, create_method("decoder"))  # "none" is always fine
    result = medsaga("finetune", SAMPLE, "--out", tmp_path / "run", "--model", "tiny", "--image-size", "64",
                     "--steps", "2", "--decoder-warmup", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "--decoder-warmup" in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_phases_share_the_steps_or_the_budget(tmp_path: Path) -> None:
    """Planned without training: half the steps (or seconds) each, the warm-up on the cache."""
    from medsaga.train.finetune import check_inputs
    from medsaga.train.options import BUDGET_STEP_LIMIT

    galore_facts = facts(frozen_module=None)  # GaLore trains the encoder: no frozen part of its own
    stepped = plan_with_warmup(check_inputs(tiny_options(tmp_path / "a", steps=200)), galore_facts,
                               "sam.image_encoder")
    assert stepped.warmup.plan.loop.steps == 100 and stepped.loop.steps == 100
    assert stepped.loop.warmup_steps == 5 and stepped.options.decoder_warmup == DEFAULT_FRACTION
    assert stepped.warmup.plan.cache.views >= 1 and stepped.warmup.plan.cache.frozen_module == "sam.image_encoder"
    assert stepped.warmup.plan.method == {"name": "decoder", "options": {}}
    assert stepped.config()["decoder_warmup"]["training"]["steps"] == 100

    budgeted = plan_with_warmup(check_inputs(tiny_options(tmp_path / "b", steps=None, time_budget="10m")),
                                galore_facts, "sam.image_encoder")
    assert budgeted.warmup.budget_seconds == 300.0
    assert budgeted.warmup.plan.loop.steps == budgeted.loop.steps == BUDGET_STEP_LIMIT
    assert budgeted.warmup.plan.loop.cache_encode == "lazy"

    short = plan_with_warmup(check_inputs(tiny_options(tmp_path / "c", steps=99)), galore_facts, "sam.image_encoder")
    assert short.warmup is None and short.loop.steps == 99 and short.config()["decoder_warmup"] is None


def test_after_a_warmup_the_default_rates_step_down_and_given_rates_stay(tmp_path: Path) -> None:
    from medsaga.train.decoder_warmup import AFTER_WARMUP_RATE
    from medsaga.train.finetune import check_inputs

    galore_facts = facts(frozen_module=None, decoder_learning_rate=1e-3)
    default = plan_with_warmup(check_inputs(tiny_options(tmp_path / "a", steps=200)), galore_facts, "sam.image_encoder")
    none = plan_with_warmup(check_inputs(tiny_options(tmp_path / "b", steps=200, decoder_warmup=0.0)), galore_facts,
                            "sam.image_encoder")
    assert default.loop.lr == pytest.approx(none.loop.lr * AFTER_WARMUP_RATE)
    assert default.loop.decoder_lr == pytest.approx(1e-3 * AFTER_WARMUP_RATE) and none.loop.decoder_lr == 1e-3
    # The warm-up itself trains at the decoder method's own rates, whatever --lr says.
    given = plan_with_warmup(check_inputs(tiny_options(tmp_path / "c", steps=200, lr=3e-4, decoder_lr=2e-4)),
                             galore_facts, "sam.image_encoder")
    assert (given.loop.lr, given.loop.decoder_lr) == (3e-4, 2e-4)
    assert given.warmup.plan.loop.lr == default.warmup.plan.loop.lr == create_method("decoder").default_lr


def test_a_budgeted_run_gives_the_warmup_its_share_of_the_seconds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    finetune(tiny_options(run, steps=None, time_budget="20s", checkpoint_every=100, decoder_warmup=0.5),
             QuietReporter(), clock=FakeClock(setup=5.0, tick=0.5))
    config = json.loads((run / "config.json").read_text())
    report = json.loads((run / "report.json").read_text())
    warm = report["decoder_warmup"]
    assert config["decoder_warmup"]["budget_seconds"] == 10.0 and warm["time_budget"]["seconds"] == 10.0
    assert warm["time_budget"]["resolved_steps"] == warm["steps"] == len(steps_in(run / WARMUP_FOLDER / "metrics.jsonl"))
    assert warm["steps"] >= 2  # it trained (its probe ends early: 2 steps of 0.5 s are 10 % of its 10 s)
    main_steps = config["time_budget"]["resolved_steps"]
    assert steps_in(run / "metrics.jsonl") == list(range(1, main_steps + 1)) and report["steps"] == main_steps
    # The method's phase got what the warm-up left: fewer steps than the whole budget buys (28 in
    # tests/test_time_budget.py's run on this clock).
    assert 1 <= main_steps < 28
