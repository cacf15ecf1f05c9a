"""The lines ``finetune`` shows about the run it is about to train: what it read, then what it
decided (:class:`~medsaga.train.run_plan.RunPlan`), in the order the user reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from medsaga import distributed
from medsaga.methods import TuningMethod
from medsaga.train.data import TrainingSlices
from medsaga.train.options import FinetuneOptions
from medsaga.train.run_plan import RunPlan
from medsaga.train.shots import CaseSplit
from medsaga.train.time_budget import StepBudget


class _Informed(Protocol):
    def info(self, message: str) -> None: ...


def announce_inputs(split: CaseSplit, model_type: str, options: FinetuneOptions, checkpoint: dict[str, Any] | None,
                    reporter: _Informed) -> None:
    """The shots (and validation cases), and where the weights came from when that needs saying."""
    reporter.info(f"shots ({len(split.train)}): {', '.join(split.train)}"
                  + (f"; validation ({len(split.val)}): {', '.join(split.val)}" if split.val else ""))
    if options.checkpoint is None:
        why = "--random-init" if options.random_init else "no --checkpoint"
        reporter.info(f"model {model_type} at {options.image_size} px with random weights ({why}): fine for tests "
                      "and benchmarks, not for "
                      "real segmentation")
    elif checkpoint is not None and checkpoint.get("packaged"):
        from medsaga.model.registry import get_model_type

        entry = get_model_type(model_type)
        cpu_size = (f"; {options.image_size} px is its default for training on a CPU (--image-size "
                    f"{entry.default_image_size} for its native size)"
                    if options.image_size == entry.cpu_train_image_size != entry.default_image_size else "")
        reporter.info(f"model {model_type} at {options.image_size} px from {checkpoint['packaged']} "
                      f"({Path(checkpoint['path']).name}, SHA-256 verified){cpu_size}")


def announce_run(plan: RunPlan, model: nn.Module, data: TrainingSlices, method: TuningMethod, device: torch.device,
                 time_budget: StepBudget | None, resume: bool, reporter: _Informed) -> None:
    """The budget, the steps and rates, the memory profile, the time estimate and the cache."""
    options, loop, steps, slices_per_step = plan.options, plan.loop, plan.loop.steps, plan.slices_per_step
    if time_budget is not None:
        reporter.info(f"time budget {time_budget.seconds:g} s: the steps are fixed after timing the first "
                      f"{time_budget.probe_steps}, so that training ends within it")
    reporter.info(f"{len(data)} training slices, "
                  + (f"steps of {slices_per_step} slices, " if time_budget is not None else
                     f"{steps} steps of {slices_per_step} slices ({steps * slices_per_step / len(data):.1f} epochs), ")
                  + f"{method.name}, lr {loop.lr:g}"
                  + (f" (the method's {plan.default_lr:g}, capped for this encoder)"
                     if options.lr is None and loop.lr != plan.default_lr else "")
                  + (f", decoder lr {loop.decoder_lr:g}" if loop.decoder_lr is not None else "")
                  + f", {device.type}, {loop.precision}")
    reporter.info(plan.memory_profile.describe())
    for note in plan.memory_profile.notes:
        reporter.info(note)
    if time_budget is None and not resume and not distributed.current().distributed:  # a budget says the time itself
        from medsaga.train.time_estimate import estimate_run

        reporter.info(estimate_run(model, data, loop, method, device).describe())
    _announce_cache(plan, data, method, time_budget, reporter)


def _announce_cache(plan: RunPlan, data: TrainingSlices, method: TuningMethod, time_budget: StepBudget | None,
                    reporter: _Informed) -> None:
    options, cache, steps, slices_per_step = plan.options, plan.cache, plan.loop.steps, plan.slices_per_step
    if cache.views:
        views = cache.views
        reporter.info(f"embedding cache: of {len(data)} slices x {views} fixed view{'s' * (views > 1)} "
                      f"(view 0 unaugmented), only the slice-views the steps read go through the frozen "
                      f"{cache.frozen_module}, once"
                      + (" each, as a step first reads them" if time_budget is not None or plan.budget_record is not None
                         else f" (at most {min(len(data) * views, steps * slices_per_step)}, before the "
                              "first step)")
                      + "; every step trains on the cache" + ("" if options.augment else " (--no-augment: one view)"))
    elif method.encoder_cacheable and options.cache_embeddings == "auto":
        if cache.budget is not None and cache.bytes > cache.budget:
            available = cache.available or 0
            reporter.info(f"embedding cache off (auto): it would hold {cache.bytes / 2**30:.1f} GiB, more than half of "
                          f"the {available / 2**30:.1f} GiB this machine has free; --cache-dtype fp16 or fewer "
                          "--cache-views shrink it, --cache-embeddings on forces it")
        else:  # only --speed weighs the cache's build against the run's length
            reporter.info(f"embedding cache off (auto, --speed): this run trains on {steps * slices_per_step} "
                          "slices, fewer "
                          f"than the {len(data) * cache.offered_views} views the "
                          "cache would encode first; --cache-embeddings on forces it")
