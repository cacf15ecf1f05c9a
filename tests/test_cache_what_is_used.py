"""The embedding cache encodes what the run's steps read (issue 29), not every slice in every view.

A 2-step smoke test of batch 4 used to encode every training slice in four views before its first
step (10+ CPU-minutes for LiteMedSAM on MALF); it now encodes the 8 slice-views its steps read.
Checked here on the tiny SAM, counting the rows that go through the frozen encoder part.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsaga.train.augment import AugmentSettings, Augmenter
from medsaga.train.embedding_cache import BLOCKS, FIRST_READ, distinct_reads, plan_cache
from medsaga.train.finetune import finetune, options_from_run
from medsaga.train.loop import LoopSettings, SilentObserver, _step_pairs, train
from medsaga.train.time_budget import StepBudget, steps_for_budget
from tests.cli_helpers import medsaga
from tests.data_paths import SAMPLE
from tests.reporters import Interrupt, QuietReporter
from tests.train_helpers import SIZE, FakeClock, cache_slices, prepared, tiny_options

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def _count_encoded(method, model) -> list[int]:
    """Rows through the frozen part, counted by a forward hook: ``[rows so far]``."""
    rows = [0]
    method.frozen_encoder(model).register_forward_hook(lambda module, args, output: rows.__setitem__(
        0, rows[0] + args[0].shape[0]))
    return rows


def _train(tmp_path: Path, name: str, settings: LoopSettings, *, count: int = 9, method_name: str = "decoder",
           budget: StepBudget | None = None):
    model, method = prepared(method_name)
    rows = _count_encoded(method, model)
    run = tmp_path / name
    run.mkdir()
    result = train(model, method, cache_slices(count), settings, run, SilentObserver(),
                   Augmenter(AugmentSettings(prob=1.0), seed=settings.seed), device=CPU, time_budget=budget)
    return result, method.trained_state(model), rows[0]


def test_a_short_run_encodes_only_the_pairs_its_steps_read(tmp_path: Path) -> None:
    settings = LoopSettings(steps=2, batch_size=2, lr=1e-3, seed=1, cache_views=3)
    result, _, rows = _train(tmp_path, "short", settings)
    # 9 slices x 3 views = 27 entries; 2 steps x 2 slices read 4 of them (one epoch: all distinct).
    assert rows == 4
    cache = result.embedding_cache
    assert (cache["entries"], cache["encoded"], cache["read"], cache["encode"]) == (27, 4, 4, "read")
    assert cache["order"] == FIRST_READ
    assert cache["summary"] == "4 of 27 slice-views encoded (what 2 steps x 2 slices read)"
    # The bytes held are those of the 4 entries: frozen output (256 x 4 x 4 floats) and a uint8 label.
    assert cache["bytes"] == 4 * (256 * 4 * 4 * 4 + SIZE * SIZE)
    # "all" (the cache before issue 29) encodes every entry for the same two steps.
    everything, _, all_rows = _train(tmp_path, "all", LoopSettings(**{**settings.__dict__, "cache_encode": "all"}))
    assert all_rows == 27 and everything.embedding_cache["encoded"] == 27


@pytest.mark.parametrize("method_name", ["decoder", "adapter"])
def test_a_run_that_reads_every_pair_trains_as_with_the_whole_cache_built_first(tmp_path: Path,
                                                                                method_name: str) -> None:
    """Every pair read: encoded in the blocks the whole cache was built in, so the embeddings,
    losses and trained weights are bit-for-bit those of the cache built up front (``all``)."""
    # 5 slices x 3 views = 15 pairs; 3 epochs (a whole view cycle) are 15 samples: 8 steps of 2.
    settings = LoopSettings(steps=8, batch_size=2, lr=1e-3, seed=1, cache_views=3)
    pairs = distinct_reads(lambda step: _step_pairs(5, 3, settings, step), 0, 8, 15)
    assert len(pairs) == 15
    read, read_state, read_rows = _train(tmp_path, "read", settings, count=5, method_name=method_name)
    whole, whole_state, whole_rows = _train(tmp_path, "all", LoopSettings(**{**settings.__dict__,
                                                                            "cache_encode": "all"}),
                                            count=5, method_name=method_name)
    assert read_rows == whole_rows == 15 and read.embedding_cache["order"] == BLOCKS
    assert read.embedding_cache["summary"] == "15 of 15 slice-views encoded (8 steps x 2 slices read every one)"
    assert read.final_loss == whole.final_loss
    assert read_state.keys() == whole_state.keys()
    for key, value in read_state.items():
        assert torch.equal(value, whole_state[key]), key


def test_a_partial_run_trains_as_with_the_whole_cache_to_float_rounding(tmp_path: Path) -> None:
    """Fewer pairs read: grouped by first read, so the encoder's batches differ from the whole
    cache's and the embeddings agree to float rounding only (a row's output depends on its batch)."""
    settings = LoopSettings(steps=3, batch_size=2, lr=1e-3, seed=1, cache_views=3)
    read, read_state, _ = _train(tmp_path, "read", settings)
    whole, whole_state, _ = _train(tmp_path, "all", LoopSettings(**{**settings.__dict__, "cache_encode": "all"}))
    assert read.final_loss == pytest.approx(whole.final_loss, abs=1e-5)
    for key, value in read_state.items():
        torch.testing.assert_close(value, whole_state[key], rtol=1e-4, atol=1e-5)


def test_lazy_encoding_is_the_up_front_plan_step_by_step(tmp_path: Path) -> None:
    """``lazy`` (a --time-budget run) encodes each step's new pairs before it, in the same batches
    as the ``read`` plan: the same rows through the encoder, the same trained weights."""
    # 9 slices x 2 views; 4 steps x 2 x 2 = 16 samples read 16 of the 18 pairs.
    settings = LoopSettings(steps=4, batch_size=2, grad_accum=2, lr=1e-3, seed=2, cache_views=2)
    read, read_state, read_rows = _train(tmp_path, "read", settings, method_name="adapter")
    lazy, lazy_state, lazy_rows = _train(tmp_path, "lazy", LoopSettings(**{**settings.__dict__,
                                                                          "cache_encode": "lazy"}),
                                         method_name="adapter")
    assert read_rows == lazy_rows == read.embedding_cache["read"] == lazy.embedding_cache["read"] < 18
    assert lazy.embedding_cache["encode"] == "lazy" and "as each step first" not in read.embedding_cache["summary"]
    assert lazy.embedding_cache["summary"].endswith("each encoded at the step that first read it)")
    for key, value in read_state.items():
        assert torch.equal(value, lazy_state[key]), key
    assert lazy.embedding_cache["build_seconds"] > 0


def test_a_resumed_run_encodes_what_its_steps_read_and_continues_exactly(tmp_path: Path) -> None:
    """Cut after the step-3 checkpoint of a 6-step run that reads a part of the pairs: the resumed
    run encodes only the encoder batches its remaining steps read (fewer than the whole run), in the
    same batches, and ends with the uninterrupted run's weights, bit for bit."""
    options = dict(shots=2, method="decoder", method_options={}, cache_embeddings="on", cache_views=4)
    whole = finetune(tiny_options(tmp_path / "whole", **options), QuietReporter())
    with pytest.raises(Interrupt):
        finetune(tiny_options(tmp_path / "cut", **options), QuietReporter(stop_at=5))
    resumed = finetune(options_from_run(tmp_path / "cut"), QuietReporter(), resume=True)
    whole_cache, resumed_cache = whole.report["embedding_cache"], resumed.report["embedding_cache"]
    assert whole_cache["order"] == FIRST_READ and whole_cache["encoded"] == whole_cache["read"] == 12
    assert resumed_cache["read"] == 6 and 6 <= resumed_cache["encoded"] < 12
    assert whole.result.final_loss == resumed.result.final_loss
    from safetensors.torch import load_file

    expected = load_file(str(tmp_path / "whole" / "trained.safetensors"))
    actual = load_file(str(tmp_path / "cut" / "trained.safetensors"))
    assert expected.keys() == actual.keys() and all(torch.equal(v, actual[k]) for k, v in expected.items())


def test_plans_are_fixed_by_the_seed_whatever_the_run_length() -> None:
    settings = LoopSettings(steps=0, batch_size=3, seed=4, cache_views=2)

    def reads(step: int):
        return _step_pairs(7, 2, settings, step)

    short = plan_cache(reads, count=7, views=2, batch_size=3, first_step=0, total_steps=2)
    longer = plan_cache(reads, count=7, views=2, batch_size=3, first_step=0, total_steps=3)
    assert short.order == longer.order == FIRST_READ
    assert longer.groups[:len(short.groups)] == short.groups  # a longer run only adds batches
    assert sum(map(len, short.groups)) == short.read == 6
    every = plan_cache(reads, count=7, views=2, batch_size=3, first_step=0, total_steps=10)
    assert every.order == BLOCKS and every.read == 14 and len(every.groups) == 6  # 3 blocks x 2 views
    resumed = plan_cache(reads, count=7, views=2, batch_size=3, first_step=1, total_steps=3)
    assert all(group in longer.groups for group in resumed.groups)


def test_the_budget_projects_encoding_apart_from_the_steps() -> None:
    # 2 s steps; 0.5 s per slice-view encoded: the next steps encode 4, 4, 2, then nothing.
    # 90 s left: 4 + 4 + 3 s for steps 6..8, then 79 s of 2 s steps = 39 more.
    assert steps_for_budget(100.0, 10.0, 2.0, 5, 0.0, encodes=iter([4, 4, 2]), seconds_per_entry=0.5) == 5 + 3 + 39
    assert steps_for_budget(12.0, 0.0, 2.0, 0, 0.0, encodes=iter([40] * 100), seconds_per_entry=0.5) == 0
    clock = iter([0.0, 10.0, 17.0, 20.0, 23.0, 26.0]).__next__
    budget = StepBudget(200.0, clock=clock, probe_steps=4, reserve_fraction=0.0)
    budget.future_encodes = lambda next_step: iter([2] * 3)  # 3 more steps encode 2 slice-views each
    budget.steps_begin()
    # The first step took 7 s, 5 s of which encoded 8 slice-views; the next three 3 s each, no encoding.
    assert budget.step_done(1, encode_seconds=5.0, encoded=8) is None
    assert [budget.step_done(n, encode_seconds=0.0) for n in (2, 3)] == [None, None]
    total = budget.step_done(4, encode_seconds=0.0)
    # Steps: 3 s (the first step's 2 s are discarded, as always); 5/8 s a slice-view.
    # 174 s left: 3 steps of 3 + 1.25 s, then 161.25 s of 3 s steps = 53 more. Counted in the
    # steps' time, the encoding would have made the first step look 7 s.
    assert budget.seconds_per_step() == 3.0 and budget.seconds_per_entry() == 5 / 8
    assert total == 4 + 3 + 53
    described = budget.describe()
    assert described["probe_encoded"] == 8 and described["probe_encode_seconds"] == 5.0


def test_the_report_and_the_terminal_say_what_was_encoded(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = medsaga("finetune", SAMPLE, "--shots", "1", "--model", "tiny", "--image-size", "64", "--method",
                     "decoder", "--steps", "2", "--batch-size", "2", "--out", run)
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "report.json").read_text())
    cache = report["embedding_cache"]
    summary = f"4 of {cache['entries']} slice-views encoded (what 2 steps x 2 slices read)"
    assert cache["summary"] == summary and cache["encoded"] == 4 and cache["entries"] > 4
    text = " ".join(result.stdout.split())
    assert summary in text, result.stdout
    assert ("only the slice-views the steps read go through the frozen sam.image_encoder, once (at most 4"
            in " ".join(result.stderr.split())), result.stderr


def test_a_budgeted_run_encodes_lazily_and_resumes_exactly(tmp_path: Path) -> None:
    """--time-budget: the steps are not known in advance, so each step encodes the pairs it reads
    first (timed apart from the step for the budget's probe); a resumed budget run encodes in the
    same batches and ends with the uninterrupted run's weights."""

    options = dict(steps=None, time_budget="20s", checkpoint_every=3, method="decoder", method_options={},
                   cache_views=2)
    whole = finetune(tiny_options(tmp_path / "whole", **options), QuietReporter(), clock=FakeClock(5.0, 0.5))
    cache = whole.report["embedding_cache"]
    assert cache["encode"] == "lazy" and cache["encoded"] == cache["read"] < cache["entries"]
    assert cache["summary"].endswith("each encoded at the step that first read it)")
    budget = json.loads((tmp_path / "whole" / "config.json").read_text())["time_budget"]
    assert budget["probe_encoded"] > 0 and budget["resolved_steps"] == whole.result.steps > 5
    with pytest.raises(Interrupt):
        finetune(tiny_options(tmp_path / "cut", **options), QuietReporter(stop_at=5), clock=FakeClock(5.0, 0.5))
    resumed = finetune(options_from_run(tmp_path / "cut"), QuietReporter(), resume=True,
                       clock=FakeClock(1e6, 1e6))
    assert resumed.result.first_step == 3 and resumed.result.steps == whole.result.steps
    assert resumed.report["embedding_cache"]["encode"] == "lazy"
    assert resumed.report["embedding_cache"]["encoded"] < cache["encoded"]
    from safetensors.torch import load_file

    expected = load_file(str(tmp_path / "whole" / "trained.safetensors"))
    actual = load_file(str(tmp_path / "cut" / "trained.safetensors"))
    assert expected.keys() == actual.keys() and all(torch.equal(v, actual[k]) for k, v in expected.items())
