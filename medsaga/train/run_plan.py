"""A fine-tuning run decided before it runs (nnU-Net's habit: plan, then train).

:func:`plan_run` is pure: from the checked options (:class:`~medsaga.train.finetune.CheckedInputs`)
and the few facts that only the built model and the read cases can tell (:class:`RunFacts`), it
decides the steps, the learning rates, the embedding cache, the memory profile in force and the
loop's settings, and returns them as a :class:`RunPlan`: everything RUN_DIR/config.json records
(:meth:`RunPlan.config` is that file). :func:`medsaga.train.finetune.finetune` gathers the facts
(:func:`gather_facts`), plans, writes the plan, then executes it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medsaga import __version__
from medsaga.data.dataset import Dataset
from medsaga.methods import TuningMethod
from medsaga.methods.base import encoder_backbone
from medsaga.model.backbone import backbone_of
from medsaga.train.augment import AugmentSettings
from medsaga.train.data import LabelMapping, SliceSettings, default_presets
from medsaga.train.embedding_cache import (available_memory_bytes, cache_entry_bytes, effective_views,
                                           frozen_module_name, use_cache)
from medsaga.train.loop import LoopSettings
from medsaga.train.memory_profile import LEAN, MemoryProfile
from medsaga.train.options import BUDGET_STEP_LIMIT, DEFAULT_EPOCHS, FinetuneOptions
from medsaga.train.shots import CaseSplit


@dataclass(frozen=True)
class CheckedInputs:
    """What :func:`medsaga.train.finetune.check_inputs` resolved: the options with their weights and
    size filled in, and everything the run needs that could fail on bad input."""

    options: FinetuneOptions
    device: torch.device
    precision: str
    gpu_memory: int | None
    profile: MemoryProfile
    method: TuningMethod
    dataset: Dataset
    mapping: LabelMapping
    split: CaseSplit


@dataclass(frozen=True)
class RunFacts:
    """What the run learned before deciding: from the built model, the read cases and the machine.

    Attributes:
        model_type: the built model's type (read from the checkpoint when only it was given).
        image_size: the model's input size.
        checkpoint: config.json's record of the base checkpoint (path, SHA-256, size, packaged
            source); ``None``: random weights.
        training_slices: slices the training cases gave.
        embedding_shape: the image encoder's output per image (the cache stores it).
        learning_rate_cap: the image encoder's cap on learning rates (``None``: none).
        decoder_learning_rate: the mask decoder's own rate for this encoder (``None``: the run's).
        frozen_module: the method's cacheable frozen part's name in the model, or ``None``.
        available_memory: what the machine could give this process now (``None``: unknown).
        budget_record: resuming a ``--time-budget`` run: the ``time_budget`` its config.json recorded.
        created: when the run was decided (config.json's ``created``).
    """

    model_type: str
    image_size: int
    checkpoint: dict[str, Any] | None
    training_slices: int
    embedding_shape: tuple[int, ...]
    learning_rate_cap: float | None
    decoder_learning_rate: float | None
    frozen_module: str | None
    available_memory: int | None
    budget_record: dict[str, Any] | None = None
    created: str = ""


@dataclass(frozen=True)
class CacheChoice:
    """The embedding cache: what was asked, what it resolved to, and why.

    Attributes:
        mode: ``--cache-embeddings`` (``auto``, ``on``, ``off``).
        views: fixed views per slice the run trains on; 0: no cache.
        offered_views: the views the cache would have held (``--cache-views``, 1 without augmentation).
        dtype: ``--cache-dtype``.
        frozen_module: the frozen part whose output is cached (``None`` without a cache).
        bytes: what the cache would hold (at most what the steps read).
        available: the memory the machine had free (``None``: unknown).
        budget: the most ``auto`` lets the cache take: half of ``available``.
    """

    mode: str
    views: int
    offered_views: int
    dtype: str
    frozen_module: str | None
    bytes: int
    available: int | None
    budget: int | None

    def to_json(self) -> dict[str, Any]:
        """config.json's ``embedding_cache``."""
        return {"mode": self.mode, "enabled": bool(self.views), "views": self.views,
                "dtype": self.dtype if self.views else None,
                "frozen_module": self.frozen_module if self.views else None}


@dataclass(frozen=True)
class RunPlan:
    """Everything a run was decided to be (config.json, section by section).

    Attributes:
        options: the options, with the model type, weights and image size resolved.
        model_type, checkpoint: the model (``model`` in config.json, with ``options.image_size``
            and ``mapping.num_classes``).
        mapping: the label values and class names (``classes``).
        dataset, split, training_slices: ``dataset``.
        slicing: how volumes become slices.
        method: the method's name and options (``method``).
        loop: the loop's settings (``training``): steps, rates, cache, precision.
        augmentation: ``augmentation``.
        cache: ``embedding_cache``.
        memory_profile: the lean or speed settings in force (``memory_profile``).
        device: ``device``.
        budgeted: a new ``--time-budget`` run (its steps are fixed after the first ones are timed).
        budget_record: resuming a budgeted run: the total its budget fixed.
        default_lr: the method's own default learning rate (to say when the encoder capped it).
        warmup: the decoder warm-up phase that runs first (``decoder_warmup``), or ``None``.
        created, version: ``created``, ``medsaga_version``.
    """

    options: FinetuneOptions
    model_type: str
    checkpoint: dict[str, Any] | None
    mapping: LabelMapping
    dataset: dict[str, Any]
    split: CaseSplit
    training_slices: int
    slicing: SliceSettings
    method: dict[str, Any]
    loop: LoopSettings
    augmentation: AugmentSettings
    cache: CacheChoice
    memory_profile: MemoryProfile
    device: str
    budgeted: bool
    budget_record: dict[str, Any] | None
    default_lr: float
    created: str
    version: str = __version__
    # The decoder warm-up before this plan's method trains (a medsaga.train.decoder_warmup.WarmupPhase),
    # or None; medsaga.train.decoder_warmup.plan_with_warmup decides it.
    warmup: Any = None

    @property
    def slices_per_step(self) -> int:
        return self.loop.batch_size * self.loop.grad_accum

    def memory_profile_record(self) -> dict[str, Any]:
        """config.json's (and report.json's) ``memory_profile``."""
        profile = self.memory_profile
        return {"profile": profile.name, "applied": list(profile.applied), "notes": list(profile.notes)}

    def config(self) -> dict[str, Any]:
        """config.json: everything needed to rebuild the model and repeat the slicing."""
        options = self.options
        recorded = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(options).items()}
        recorded["cases"] = list(options.cases)
        return {
            "medsaga_version": self.version,
            "created": self.created,
            "model": {"type": self.model_type, "image_size": options.image_size, "num_classes": self.mapping.num_classes,
                      "checkpoint": self.checkpoint},
            "classes": {"values": list(self.mapping.values), "names": list(self.mapping.names)},
            "dataset": {**self.dataset, "train_cases": list(self.split.train), "val_cases": list(self.split.val),
                        "training_slices": self.training_slices, "selection": options.selection},
            "slicing": asdict(self.slicing),
            "method": dict(self.method),
            "training": asdict(self.loop),
            "augmentation": asdict(self.augmentation),
            "embedding_cache": self.cache.to_json(),
            "memory_profile": self.memory_profile_record(),
            "device": self.device,
            "decoder_warmup": self.warmup.config() if self.warmup is not None else None,
            "options": recorded,
        }


def slice_settings(options: FinetuneOptions, dataset: Dataset) -> SliceSettings:
    """How the run's volumes become slices (decided before any case is read: reading needs it)."""
    return SliceSettings(plane=options.plane,
                         mode=options.slice_mode or ("repeat" if len(dataset.channel_names) == 1 else "modalities"),
                         presets=default_presets(dataset, options.intensity), image_size=options.image_size,
                         empty_ratio=options.empty_ratio)


def plan_run(checked: CheckedInputs, facts: RunFacts) -> RunPlan:
    """The run ``checked`` asks for, given ``facts`` (module docstring). Pure: reads nothing, writes
    nothing, trains nothing."""
    method, profile = checked.method, checked.profile
    options = replace(checked.options, image_size=facts.image_size)
    budgeted = options.time_budget is not None and facts.budget_record is None
    slices = facts.training_slices
    slices_per_step = options.batch_size * options.grad_accum
    steps = options.steps if options.steps is not None else math.ceil(
        (options.epochs or DEFAULT_EPOCHS) * slices / slices_per_step)
    if facts.budget_record is not None:  # resumed: the total its budget fixed
        steps = facts.budget_record["resolved_steps"]
    elif budgeted:  # an upper bound until the budget fixes the total
        steps = BUDGET_STEP_LIMIT
    cache = _choose_cache(options, method, profile, facts, steps)
    cap = facts.learning_rate_cap
    lr = options.lr if options.lr is not None else (method.default_lr if cap is None else min(method.default_lr, cap))
    decoder_lr = options.decoder_lr if options.decoder_lr is not None else facts.decoder_learning_rate
    warmup = (0 if budgeted else facts.budget_record["warmup_steps"] if facts.budget_record is not None
              else int(round(options.warmup_fraction * steps)))
    loop = LoopSettings(steps=steps, batch_size=options.batch_size, grad_accum=options.grad_accum,
                        lr=lr, decoder_lr=decoder_lr,
                        weight_decay=options.weight_decay if options.weight_decay is not None
                        else method.default_weight_decay,
                        warmup_steps=warmup, seed=options.seed, precision=checked.precision,
                        activation_checkpointing=profile.activation_checkpointing,
                        checkpoint_every=options.checkpoint_every, cache_views=cache.views,
                        cache_dtype=options.cache_dtype, fast_attention=options.attention == "fast",
                        # a budget's steps are not known before they run: each encodes what it reads
                        cache_encode="lazy" if options.time_budget is not None else "read")
    if cache.views and profile.name == LEAN:  # the cache is decided here, once its size is known
        profile = replace(profile, applied=(*profile.applied, "embedding_cache"))
    dataset = checked.dataset
    return RunPlan(
        options=options, model_type=facts.model_type, checkpoint=facts.checkpoint, mapping=checked.mapping,
        dataset={"root": str(dataset.root.resolve()), "name": dataset.name, "layout": dataset.layout,
                 "channel_names": list(dataset.channel_names)},
        split=checked.split, training_slices=slices, slicing=slice_settings(options, dataset),
        method={"name": method.name, "options": method.options.to_json()}, loop=loop,
        augmentation=AugmentSettings(enabled=options.augment), cache=cache, memory_profile=profile,
        device=str(checked.device), budgeted=budgeted, budget_record=facts.budget_record,
        default_lr=method.default_lr, created=facts.created)


def _choose_cache(options: FinetuneOptions, method: TuningMethod, profile: MemoryProfile, facts: RunFacts,
                  steps: int) -> CacheChoice:
    """Train on the embedding cache or not (:func:`~medsaga.train.embedding_cache.use_cache`)."""
    slices_per_step = options.batch_size * options.grad_accum
    views = effective_views(options.cache_views, options.augment)
    # The cache holds at most what the steps read (medsaga.train.embedding_cache.plan_cache).
    cache_bytes = min(facts.training_slices * views, steps * slices_per_step) * cache_entry_bytes(
        facts.embedding_shape, facts.image_size, options.cache_dtype, method.cache_needs_images)
    available = facts.available_memory
    # Half of what the machine has free now: the model, the batches and the activations need the rest.
    budget = available // 2 if available is not None else None
    chosen = views if use_cache(options.cache_embeddings, method, samples=steps * slices_per_step,
                                entries=facts.training_slices * views, cache_bytes=cache_bytes,
                                memory_budget=budget, lean=profile.name == LEAN) else 0
    return CacheChoice(options.cache_embeddings, chosen, views, options.cache_dtype,
                       facts.frozen_module if chosen else None, cache_bytes, available, budget)


def gather_facts(model: nn.Module, method: TuningMethod, *, model_type: str, training_slices: int,
                 checkpoint: dict[str, Any] | None, budget_record: dict[str, Any] | None = None) -> RunFacts:
    """The :class:`RunFacts` of ``model`` (built, and prepared by ``method``) and its training
    slices; reads the machine's free memory and the clock."""
    encoder, backbone = encoder_backbone(model)
    frozen = frozen_module_name(model, method) if method.frozen_encoder(model) is not None else None
    return RunFacts(model_type=model_type, image_size=model.image_size, checkpoint=checkpoint,
                    training_slices=training_slices, embedding_shape=tuple(backbone.embedding_shape(encoder)),
                    learning_rate_cap=backbone_of(model.image_encoder).learning_rate_cap,
                    decoder_learning_rate=backbone.decoder_learning_rate, frozen_module=frozen,
                    available_memory=available_memory_bytes(), budget_record=budget_record,
                    created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def default_learning_rate(method: TuningMethod, model: Any) -> float:
    """The method's default learning rate, at most the image encoder's cap (see
    :attr:`~medsaga.model.backbone.Backbone.learning_rate_cap`)."""
    cap = backbone_of(model.image_encoder).learning_rate_cap
    return method.default_lr if cap is None else min(method.default_lr, cap)
