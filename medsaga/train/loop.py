"""The training loop: the same code path for every method (it never asks a method's name).

What it asks a method: its optimizer, whether the encoder runs without gradients, and an optional
auxiliary loss. Everything random in a step (batch order, augmentation, noise inside a method) is
seeded from (seed, step), so a run resumed from a checkpoint at step k continues exactly as the
uninterrupted run would have.

With ``cache_views`` set (methods with a cacheable frozen encoder part), the loop first builds an
:class:`~medsaga.train.embedding_cache.EmbeddingCache` of the (slice, view) pairs its steps will read
(fixed augmented views and the frozen part's output on each; :func:`~medsaga.train.cache_plan.plan_cache`
knows them from (seed, step) before the first step), then every step trains on its cached pairs
and asks the method to finish the forward pass from the cached output. The build is timed apart
from the steps; a ``--time-budget`` run, whose length is not known yet, encodes each step's new
pairs just before the step, also timed apart (see :mod:`medsaga.train.embedding_cache`).

Under ``torchrun`` (:mod:`medsaga.distributed`) every rank runs this same loop on its contiguous
share of each global batch (``batch_size`` is the global batch): DistributedDataParallel averages
the gradients, the loss's batch-wide sums and BatchNorm statistics span all ranks, and each sample
is augmented as its global position says, so N processes compute the single-process run (to
float rounding of the reordered sums). Layer-wise GaLore updates inside backward, before DDP could
reduce anything: there the optimizer averages each gradient over the ranks in its hook instead.
Only rank 0 writes the metrics and checkpoints, and only rank 0 validates.

The loop is a :class:`Trainer` with nnU-Net's hooks: setup (:meth:`~Trainer.on_train_start`), one
optimizer step (:meth:`~Trainer.train_step`), what follows each step and each epoch
(:meth:`~Trainer.on_step_end`, :meth:`~Trainer.on_epoch_end`), teardown
(:meth:`~Trainer.on_train_end`); :func:`train` runs them. The memory meters are one
:class:`~medsaga.train.meters.MemoryMeters`; the batch order is :mod:`medsaga.train.schedule`'s,
the forward pass :mod:`medsaga.train.forward`'s, checkpoint bookkeeping :mod:`medsaga.train.resume`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from torch import nn

from medsaga import distributed
from medsaga.errors import InputError
from medsaga.losses import segmentation_loss
from medsaga.methods.base import TuningMethod, count_parameters, image_encoder
from medsaga.model.activation_checkpointing import checkpoint_encoder_blocks
from medsaga.model.fast_attention import speed_up_encoder
from medsaga.optim import check_layerwise_compatible, warmup_poly_lr
from medsaga.train.augment import Augmenter
from medsaga.train.data import TrainingSlices
from medsaga.train.cache_plan import ENCODE_MODES, CachePlan, distinct_reads, plan_cache
from medsaga.train.embedding_cache import EmbeddingCache, encode_groups, new_cache
from medsaga.train.forward import TrainingForward, autocast, distribute
from medsaga.train.memory import MemoryBreakdown
from medsaga.train.meters import MemoryMeters
from medsaga.train.resume import checkpoint_due as _checkpoint_due
from medsaga.train.resume import diverged_message, load_training_state, not_finite, save_checkpoint, truncate_metrics
from medsaga.train.schedule import batch_samples, cached_view, step_seed
from medsaga.train.schedule import step_pairs as _step_pairs
from medsaga.train.time_budget import StepBudget

METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class LoopSettings:
    """How long and how to train.

    Attributes:
        steps: optimizer steps in all.
        batch_size: slices per forward pass.
        grad_accum: forward/backward passes per optimizer step.
        lr: peak learning rate (after warm-up).
        decoder_lr: the mask decoder's own peak learning rate (same schedule); ``None``: ``lr``.
        weight_decay: AdamW's decoupled weight decay.
        warmup_steps: linear warm-up, then polynomial (0.9) decay to 0 at the last step.
        seed: seeds batch order, augmentation and any noise inside the model.
        precision: ``"fp32"`` or ``"bf16"`` (autocast).
        activation_checkpointing: recompute encoder blocks in backward instead of storing them.
        checkpoint_every: write a resumable checkpoint after the first step, then every this many
            steps (0: only at the end).
        cache_views: 0 trains as usual (fresh augmentation each step, the whole model run);
            ``V >= 1`` trains on the embedding cache with ``V`` fixed views per slice (view 0
            unaugmented), for a method whose ``encoder_cacheable`` is true.
        cache_dtype: storage of the cached outputs: ``fp32``, ``fp16`` or ``bf16``.
        cache_encode: which entries the cache encodes (:func:`~medsaga.train.cache_plan.plan_cache`):
            ``read``: those the steps read, before the first step; ``lazy``: each step's new ones
            before that step (always with a ``time_budget``: the total is not known before the
            steps; a resumed budget run must say ``lazy`` too, to encode in the same batches);
            ``all``: every entry up front.
        fast_attention: run the image encoder's attention without the work on window padding
            (:mod:`medsaga.model.fast_attention`: exact, outputs and gradients equal to SAM's to
            float rounding); ``False`` keeps SAM's own padded-window attention.
        tensor_peak_step: on a CPU, the (0-based) step whose tensor bytes are profiled
            (:class:`~medsaga.train.memory.StepTensorPeak`); ``None``: the second step of this
            run (the first already made the optimizer state), or its only one.
    """

    steps: int
    batch_size: int
    grad_accum: int = 1
    lr: float = 5e-3
    weight_decay: float = 0.1
    decoder_lr: float | None = None
    warmup_steps: int = 0
    seed: int = 0
    precision: str = "fp32"
    activation_checkpointing: bool = False
    checkpoint_every: int = 0
    cache_views: int = 0
    cache_dtype: str = "fp32"
    cache_encode: str = "read"
    fast_attention: bool = True
    tensor_peak_step: int | None = None


class TrainingObserver(Protocol):
    """What the loop reports while it runs (the CLI draws a progress bar from it).

    An observer may also define ``on_cache_progress(done, total)``: images whose frozen-encoder
    output is cached so far, while the embedding cache is built (optional, looked up by name).
    """

    def on_start(self, total_steps: int, first_step: int, steps_per_epoch: float) -> None: ...

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None: ...

    def on_validation(self, epoch: int, mean_dice: float) -> None: ...


class SilentObserver:
    """A :class:`TrainingObserver` that shows nothing (profiled steps, tests)."""

    def on_start(self, total_steps: int, first_step: int, steps_per_epoch: float) -> None:
        pass

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None:
        pass

    def on_validation(self, epoch: int, mean_dice: float) -> None:
        pass


@dataclass
class TrainResult:
    """What a run measured (goes to report.json)."""

    steps: int
    first_step: int
    slices_seen: int
    wall_seconds: float
    slices_per_second: float
    final_loss: float
    trainable_parameters: int
    total_parameters: int
    memory: MemoryBreakdown
    peak_memory: dict[str, Any]
    validation_dice: list[float] = field(default_factory=list)
    # EmbeddingCache.describe() plus the throughput including the build; None without a cache.
    embedding_cache: dict[str, Any] | None = None
    # The most tensor bytes alive at once above the model (StepTensorPeak.describe() on a CPU).
    tensor_peak: dict[str, Any] | None = None
    # Under torchrun: world size, backend, and each rank's peak memory and tensor peak; else None.
    distributed: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["memory"] = self.memory.to_json()
        return data


Validator = Any  # a callable model -> mean Dice, see medsaga.train.validation


def train(model: nn.Module, method: TuningMethod, data: TrainingSlices, settings: LoopSettings, run_dir: Path,
          observer: TrainingObserver, augmenter: Augmenter, *, device: torch.device,
          resume: bool = False, validator: Validator | None = None,
          cache_encoder: bool = True, save_state: bool = True,
          time_budget: StepBudget | None = None) -> TrainResult:
    """Train ``model`` (already prepared by ``method``) on ``data``; write metrics and checkpoints.

    Returns the measurements; the caller saves the trained state and the report.
    ``cache_encoder=False`` (with ``settings.cache_views``) keeps the fixed views but runs the whole
    model on them every step: the uncached reference the cache is tested against.
    ``save_state=False`` writes no resumable checkpoint (profiled or timed steps in a scratch
    folder, where writing the whole model would only cost time: 2.4 GiB for ViT-H).
    """
    return Trainer(model, method, data, settings, run_dir, observer, augmenter, device=device, resume=resume,
                   validator=validator, cache_encoder=cache_encoder, save_state=save_state,
                   time_budget=time_budget).run()


class Trainer:
    """One run of the loop (module docstring): the hooks, and :meth:`run` calling them in order.

    ``settings`` is the one thing that changes on the way: a ``--time-budget`` run replaces its
    upper bound on the steps by the total the budget fixes.
    """

    def __init__(self, model: nn.Module, method: TuningMethod, data: TrainingSlices, settings: LoopSettings,
                 run_dir: Path, observer: TrainingObserver, augmenter: Augmenter, *, device: torch.device,
                 resume: bool = False, validator: Validator | None = None, cache_encoder: bool = True,
                 save_state: bool = True, time_budget: StepBudget | None = None) -> None:
        self.model, self.method, self.data, self.settings = model, method, data, settings
        self.run_dir, self.observer, self.augmenter, self.device = run_dir, observer, augmenter, device
        self.resume, self.validator, self.cache_encoder, self.save_state = resume, validator, cache_encoder, save_state
        self.time_budget = time_budget
        self.rank = distributed.current()
        self.writes = self.rank.is_main and save_state  # only rank 0 writes the run folder
        self.metrics_path = run_dir / METRICS_FILE
        self.first_step = 0
        self.slices_per_step = settings.batch_size * settings.grad_accum
        self.steps_per_epoch = len(data) / self.slices_per_step
        self.cache: EmbeddingCache | None = None
        self.cache_plan: CachePlan | None = None
        self.lazy_seconds = 0.0  # encoding inside the loop (a lazy cache): not step time
        self.loss_value = math.nan
        self.validation: list[float] = []
        # The step of the newest checkpoint on disk (every rank tracks it: the divergence line names it).
        self.last_checkpoint: int | None = None
        self._metrics: IO[str] | None = None

    # --- the order ------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self.on_train_start()
        with (open(self.metrics_path, "a", encoding="utf-8") if self.rank.is_main
              else open(os.devnull, "w")) as self._metrics:
            step = self.first_step
            while step < self.settings.steps:  # a time budget may lower the total on the way
                encode_seconds, encoded = self.encode_for_step(step)
                step_started = time.perf_counter()
                loss = self.train_step(step)
                self.on_step_end(step, loss, step_started, encode_seconds=encode_seconds, encoded=encoded)
                step += 1
        return self.on_train_end()

    # --- setup ----------------------------------------------------------------------------------

    def on_train_start(self) -> None:
        """Checks, model surgery, optimizer and schedule, resume, embedding cache, meters."""
        settings, model, method, device = self.settings, self.model, self.method, self.device
        _check_settings(settings, method, self.rank)
        # Before checkpointing, so a checkpointed block recomputes the fast forward (either order works:
        # speed_up_encoder re-wraps checkpointed blocks) and before the cache, which it also speeds up.
        if settings.fast_attention:
            speed_up_encoder(image_encoder(model))
        if settings.activation_checkpointing and not method.encoder_frozen:
            checkpoint_encoder_blocks(image_encoder(model))
        if self.rank.distributed:
            distributed.sync_batch_norms(model)
        model.to(device)
        self.optimizer = method.build_optimizer(model, settings.lr, settings.weight_decay,
                                                decoder_lr=settings.decoder_lr)
        layerwise = bool(getattr(self.optimizer, "layerwise", False))
        if layerwise:
            check_layerwise_compatible(settings.grad_accum, None, None)
        self.forward: nn.Module = TrainingForward(model, method)
        if self.rank.distributed:
            self.forward = distribute(self.forward, self.optimizer, layerwise, device)
        # With a time budget, settings.steps is only an upper bound until the budget fixes the total
        # (medsaga.train.time_budget); its factor then follows warmup_poly_lr for that total.
        budget = self.time_budget
        self.scheduler = (torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda t: budget.lr_factor(t))
                          if budget is not None else warmup_poly_lr(self.optimizer, settings.steps, settings.warmup_steps))
        if self.resume:
            self.first_step = load_training_state(self.run_dir, method=method, model=model, optimizer=self.optimizer,
                                                  scheduler=self.scheduler, total_steps=settings.steps)
            self.last_checkpoint = self.first_step
            if self.rank.is_main:
                truncate_metrics(self.metrics_path, self.first_step)
        self.meters = MemoryMeters(device)  # taken before the cache is built: the cache counts toward the peak
        self.autocast = autocast(device, settings.precision)
        if settings.cache_views:
            self._build_cache()
        self.parameter_dtype = next(model.parameters()).dtype
        self.observer.on_start(settings.steps, self.first_step, self.steps_per_epoch)
        profiled_step = settings.tensor_peak_step
        if profiled_step is None:
            profiled_step = self.first_step + 1 if self.first_step + 1 < settings.steps else self.first_step
        self.meters.attach(model, profiled_step)
        model.train()
        self.started = time.perf_counter()
        if budget is not None:
            budget.steps_begin()  # the time so far (reading, model, cache) counted toward the budget
            if self._lazy:  # the encoding the remaining steps will do, for the total the budget fixes
                plan, cache = self.cache_plan, self.cache
                assert plan is not None
                budget.future_encodes = lambda next_step: plan.future_encodes(next_step, cache)

    def _build_cache(self) -> None:
        """The embedding cache of the (slice, view) pairs the steps read; those known before the
        first step are encoded now (medsaga.train.cache_plan.plan_cache)."""
        settings, data = self.settings, self.data
        views, count = settings.cache_views, len(data)
        plan = plan_cache(lambda step: _step_pairs(count, views, settings, step), count=count, views=views,
                          batch_size=settings.batch_size, first_step=self.first_step, total_steps=settings.steps,
                          # the total is not known before a budget's steps: encode as they read
                          mode="lazy" if self.time_budget is not None else settings.cache_encode)
        cache = new_cache(self.model, self.method, data, views=views, dtype=settings.cache_dtype,
                          encode=self.cache_encoder, order=plan.order)
        if plan.groups:
            encode_groups(cache, self.model, self.method, data, self.augmenter, plan.groups, device=self.device,
                          autocast=autocast(self.device, settings.precision),
                          progress=getattr(self.observer, "on_cache_progress", None))
        self.cache, self.cache_plan = cache, plan

    @property
    def _lazy(self) -> bool:
        return self.cache_plan is not None and self.cache_plan.mode == "lazy"

    # --- each step ------------------------------------------------------------------------------

    def encode_for_step(self, step: int) -> tuple[float, int]:
        """A lazy cache: this step's pairs it does not hold yet, before (and timed apart from) the
        step. The seconds on the budget's clock, and the entries encoded."""
        if not self._lazy:
            return 0.0, 0
        plan, cache, budget = self.cache_plan, self.cache, self.time_budget
        assert plan is not None and cache is not None
        groups = plan.step_groups(step, cache)
        if not groups:
            return 0.0, 0
        # On the budget's own clock (wall, or this process's CPU seconds) for the budget.
        before = budget.clock() if budget is not None else 0.0
        seconds, encoded = encode_groups(cache, self.model, self.method, self.data, self.augmenter, groups,
                                         device=self.device, autocast=self.autocast)
        self.lazy_seconds += seconds
        return (budget.clock() - before if budget is not None else seconds), encoded

    def train_step(self, step: int) -> float:
        """One optimizer step (0-based ``step``); its mean loss over the global batch."""
        torch.manual_seed(step_seed(self.settings.seed, step))  # noise inside methods (Conv-LoRA's gate)
        # Before the profiled step begins: the last step's gradients are not held between steps.
        self.optimizer.zero_grad(set_to_none=True)
        self.meters.step_begins()
        with self.meters.around_step(step, self.optimizer):
            return _step(self.forward, self.model, self.method, self.data, self.settings, self.optimizer,
                         self.augmenter, self.cache, self.autocast, self.meters, self.device, self.parameter_dtype,
                         step)

    def on_step_end(self, step: int, loss: float, step_started: float, *, encode_seconds: float = 0.0,
                    encoded: int = 0) -> None:
        """After step ``step``: the budget, the divergence guard, the schedule, the metrics line and
        progress, the epoch's end, the checkpoint."""
        budget = self.time_budget
        if (budget is not None and not budget.resolved
                and budget.step_done(step + 1, encode_seconds=encode_seconds, encoded=encoded) is not None):
            # Before scheduler.step(): the next step's lr is already the fitted schedule's.
            self.settings = replace(self.settings, steps=budget.total_steps, warmup_steps=budget.warmup_steps)
            if hasattr(self.observer, "on_total_steps"):
                self.observer.on_total_steps(self.settings.steps)
        settings = self.settings
        assert self._metrics is not None
        # The one place a diverged run stops: before its metrics line, checkpoint or trained weights.
        due = self.save_state and _checkpoint_due(settings, step)
        failure = not_finite(loss, self.method, self.model, check_weights=due or step + 1 == settings.steps)
        if failure is not None:
            self._metrics.flush()
            raise InputError(diverged_message(step + 1, failure, self.run_dir, self.last_checkpoint, settings))
        self.scheduler.step()
        self.loss_value = loss
        elapsed = time.perf_counter() - step_started
        lr = self.optimizer.param_groups[0]["lr"]
        self._metrics.write(json.dumps({"step": step + 1, "loss": round(loss, 6), "lr": lr,
                                        "seconds": round(elapsed, 4)}) + "\n")
        self.observer.on_step(step + 1, loss, lr, self.slices_per_step / max(elapsed, 1e-9))
        per_epoch = self.steps_per_epoch
        if math.floor((step + 1) / per_epoch) > math.floor(step / per_epoch) or step + 1 == settings.steps:
            self.on_epoch_end(step)
        if due:
            if self.writes:
                self._metrics.flush()
                save_checkpoint(self.run_dir, step=step + 1, method=self.method, model=self.model,
                                optimizer=self.optimizer, scheduler=self.scheduler)
            self.last_checkpoint = step + 1

    def on_epoch_end(self, step: int) -> None:
        """An epoch ended with step ``step`` (or the run did): rank 0 validates, when it has cases to."""
        if self.validator is not None and self.rank.is_main:
            dice = self.validator(self.model)
            self.validation.append(dice)
            self.observer.on_validation(len(self.validation), dice)
            self.model.train()

    # --- teardown -------------------------------------------------------------------------------

    def on_train_end(self) -> TrainResult:
        """The last checkpoint, then every meter read: the run's :class:`TrainResult`."""
        settings = self.settings
        wall = time.perf_counter() - self.started - self.lazy_seconds  # the steps' time; the cache's is its build
        if self.writes:
            save_checkpoint(self.run_dir, step=settings.steps, method=self.method, model=self.model,
                            optimizer=self.optimizer, scheduler=self.scheduler)
        readings = self.meters.finish(self.model, self.optimizer)
        trainable, total = count_parameters(self.model)
        slices = (settings.steps - self.first_step) * self.slices_per_step
        return TrainResult(settings.steps, self.first_step, slices, wall, slices / max(wall, 1e-9), self.loss_value,
                           trainable, total, readings.memory, readings.peak_memory, self.validation,
                           self._cache_report(slices, wall), readings.tensor_peak, readings.per_rank)

    def _cache_report(self, slices: int, wall: float) -> dict[str, Any] | None:
        cache, plan, settings = self.cache, self.cache_plan, self.settings
        if cache is None or plan is None:
            return None
        if plan.read is None:  # lazy: the run's length is known now
            plan.read = len(distinct_reads(plan.step_reads, self.first_step, settings.steps, plan.entries))
        return {**cache.describe(), "encode": plan.mode, "read": plan.read,
                "summary": plan.summary(settings.steps - self.first_step, self.slices_per_step, cache.encoded),
                "slices_per_second_including_build": slices / max(wall + cache.build_seconds, 1e-9)}


def _check_settings(settings: LoopSettings, method: TuningMethod, rank: distributed.Rank) -> None:
    if settings.cache_views < 0:
        raise ValueError(f"cache_views must be 0 (no cache) or more, got {settings.cache_views}")
    if settings.cache_views and not method.encoder_cacheable:
        raise ValueError(f"method {method.name!r} has no cacheable frozen encoder part (cache_views must be 0)")
    if settings.cache_encode not in ENCODE_MODES:
        raise ValueError(f"cache_encode must be one of {', '.join(ENCODE_MODES)}, got {settings.cache_encode!r}")
    if settings.batch_size % rank.world_size:
        raise ValueError(f"batch_size {settings.batch_size} (the global batch) is not divisible by the "
                         f"{rank.world_size} processes")


def _step(forward: nn.Module, model: nn.Module, method: TuningMethod, data: TrainingSlices, settings: LoopSettings,
          optimizer: torch.optim.Optimizer, augmenter: Augmenter, cache: EmbeddingCache | None,
          autocast: contextlib.AbstractContextManager[Any], meters: MemoryMeters,
          device: torch.device, parameter_dtype: torch.dtype, step: int) -> float:
    """One optimizer step (``grad_accum`` forward/backward passes, then ``optimizer.step()``); its mean loss
    (over all ranks: the single-process loss of the global batch)."""
    rank = distributed.current()
    share = rank.shard(settings.batch_size)
    loss_total = 0.0
    for micro in range(settings.grad_accum):
        samples = batch_samples(len(data), settings.seed, step, micro, settings.batch_size, settings.grad_accum)[share]
        cached_output: torch.Tensor | None = None
        if cache is None:
            images, labels = augmenter(*data.batch([position for _, position in samples]),
                                       step=step * settings.grad_accum + micro, first_position=share.start)
        else:
            cached_output, images, labels = cache.batch(
                [(position, cached_view(len(data), cache.views, settings.seed, epoch, position))
                 for epoch, position in samples])
            cached_output = cached_output.to(device=device, dtype=parameter_dtype) if cached_output is not None else None
        images = images.to(device) if images is not None else None
        labels = labels.to(device)
        # DDP reduces gradients on the last micro-batch only (it sums into .grad until then).
        last = micro == settings.grad_accum - 1
        sync = forward.no_sync() if hasattr(forward, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            with autocast, meters.measure_saved():
                logits = forward(images, cached_output)
                loss = segmentation_loss(logits, labels)
                auxiliary = method.auxiliary_loss(model)
                if auxiliary is not None:
                    loss = loss + auxiliary
            (loss / settings.grad_accum).backward()
        loss_total += loss.item() / settings.grad_accum
    optimizer.step()
    return distributed.mean_over_ranks(loss_total)
