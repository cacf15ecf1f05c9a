"""A run decided before it runs (issue 28): :func:`medsaga.train.run_plan.plan_run` is pure, and its
:class:`RunPlan` is what config.json records."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from medsaga.train.data import TrainingSlices, load_case_stacks
from medsaga.train.decoder_warmup import plan_with_warmup, warmup_method
from medsaga.train.embedding_cache import frozen_module_name
from medsaga.train.finetune import _build_model, check_inputs, finetune
from medsaga.train.loop import LoopSettings
from medsaga.train.options import BUDGET_STEP_LIMIT
from medsaga.train.run_plan import gather_facts, plan_run, slice_settings
from tests.reporters import QuietReporter
from tests.train_helpers import facts, tiny_options


def json_round_trip(document: dict) -> dict:
    return json.loads(json.dumps(document))


@pytest.mark.parametrize("method,method_options", [("galore", {"update_proj_gap": 2}), ("decoder", {})])
def test_the_plan_is_what_config_json_records_after_a_real_run(tmp_path: Path, method: str,
                                                               method_options: dict) -> None:
    """Planned from the checked inputs, the built model and the read slices (no step trained),
    then the same options trained for 2 steps: config.json holds the plan, field by field."""
    options = tiny_options(tmp_path / "run", steps=2, val=1, checkpoint_every=0, method=method,
                           method_options=method_options)
    checked = check_inputs(options)
    model, model_type, checkpoint = _build_model(checked.options, checked.options.model, checked.mapping.num_classes)
    checked.method.prepare(model)
    stacks = load_case_stacks(checked.dataset, checked.split.train, slice_settings(checked.options, checked.dataset),
                              checked.mapping, options.seed)
    data = TrainingSlices(stacks, checked.options.image_size)
    plan = plan_with_warmup(checked, gather_facts(model, checked.method, model_type=model_type,
                                                  training_slices=len(data), checkpoint=checkpoint),
                            frozen_module_name(model, warmup_method()))
    assert not (tmp_path / "run").exists()  # planning wrote nothing
    assert plan.warmup is None and plan.options.decoder_warmup == 0.0  # 2 steps: too short for a warm-up

    finetune(options, QuietReporter())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert plan.loop == LoopSettings(**config["training"]) and plan.loop.steps == 2
    assert json_round_trip(asdict(plan.slicing)) == config["slicing"]
    assert json_round_trip(asdict(plan.augmentation)) == config["augmentation"]
    assert plan.cache.to_json() == config["embedding_cache"]
    assert plan.cache.views == (4 if method == "decoder" else 0)  # lean + a cacheable encoder: the cache
    assert plan.memory_profile_record() == json_round_trip(config["memory_profile"])
    assert plan.model_type == config["model"]["type"] == "tiny" and plan.checkpoint == config["model"]["checkpoint"]
    assert plan.training_slices == config["dataset"]["training_slices"] == len(data)
    assert list(plan.split.train) == config["dataset"]["train_cases"]
    assert list(plan.split.val) == config["dataset"]["val_cases"]
    assert plan.device == config["device"] and json_round_trip(plan.method) == config["method"]
    assert json_round_trip(plan.config()) == {**config, "created": plan.created}


@pytest.fixture
def checked(tmp_path: Path):
    return check_inputs(tiny_options(tmp_path / "run", steps=None, epochs=3, batch_size=2, method="decoder",
                                     method_options={}))


def test_steps_rates_and_cache_are_decided_from_the_facts_alone(checked) -> None:
    plan = plan_run(checked, facts())
    assert plan.loop.steps == 15 and plan.loop.warmup_steps == 1  # ceil(3 epochs x 10 slices / 2)
    assert plan.loop.lr == checked.method.default_lr and plan.loop.decoder_lr is None
    assert plan.cache.views == 4 and plan.loop.cache_views == 4 and plan.cache.frozen_module == "sam.image_encoder"
    assert "embedding_cache" in plan.memory_profile.applied
    assert plan.config()["created"] == "now" and plan.config()["training"] == asdict(plan.loop)

    capped = plan_run(checked, facts(learning_rate_cap=checked.method.default_lr / 10, decoder_learning_rate=1e-5))
    assert capped.loop.lr == checked.method.default_lr / 10 and capped.loop.decoder_lr == 1e-5
    assert plan_run(replace(checked, options=replace(checked.options, lr=0.5)), facts(learning_rate_cap=1e-6)).loop.lr == 0.5


def test_auto_cache_stays_off_when_it_would_fill_half_the_free_memory(checked) -> None:
    plan = plan_run(checked, facts(available_memory=1000))
    assert plan.cache.views == 0 and plan.cache.to_json()["enabled"] is False and plan.cache.budget == 500
    assert plan.cache.bytes > 500 and "embedding_cache" not in plan.memory_profile.applied
    assert plan.cache.to_json()["frozen_module"] is None


def test_a_time_budget_plans_an_upper_bound_and_a_resumed_one_its_recorded_total(checked) -> None:
    budgeted = replace(checked, options=replace(checked.options, epochs=None, time_budget="10m"))
    plan = plan_run(budgeted, facts())
    assert plan.budgeted and plan.loop.steps == BUDGET_STEP_LIMIT and plan.loop.warmup_steps == 0
    assert plan.loop.cache_encode == "lazy"
    resumed = plan_run(budgeted, facts(budget_record={"resolved_steps": 37, "warmup_steps": 2}))
    assert not resumed.budgeted and resumed.loop.steps == 37 and resumed.loop.warmup_steps == 2
    assert resumed.loop.cache_encode == "lazy"
