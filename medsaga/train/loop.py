"""The training loop: the same code path for every method (it never asks a method's name).

What it asks a method: its optimizer, whether the encoder runs without gradients, and an optional
auxiliary loss. Everything random in a step (batch order, augmentation, noise inside a method) is
seeded from (seed, step), so a run resumed from a checkpoint at step k continues exactly as the
uninterrupted run would have.

With ``cache_views`` set (methods with a cacheable frozen encoder part), the loop first builds an
:class:`~medsaga.train.embedding_cache.EmbeddingCache` of the (slice, view) pairs its steps will read
(fixed augmented views and the frozen part's output on each; :func:`~medsaga.train.embedding_cache.plan_cache`
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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from medsaga import distributed
from medsaga.errors import InputError
from medsaga.io.atomic import write_errors
from medsaga.losses import segmentation_loss
from medsaga.methods.base import TuningMethod, count_parameters, image_encoder
from medsaga.model.activation_checkpointing import checkpoint_encoder_blocks
from medsaga.model.fast_attention import speed_up_encoder
from medsaga.optim import check_layerwise_compatible, warmup_poly_lr
from medsaga.train.augment import Augmenter
from medsaga.train.data import TrainingSlices
from medsaga.train.embedding_cache import (ENCODE_MODES, CachePlan, EmbeddingCache, Pair, distinct_reads, encode_groups,
                                           new_cache, plan_cache, view_schedule)
from medsaga.train.memory import (GradientMeter, MemoryBreakdown, PeakMemory, SavedActivationMeter, StepTensorPeak,
                                  optimizer_state_bytes, parameter_bytes)
from medsaga.train.resume import CHECKPOINT_DIR, load_training_state, save_training_state
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
        cache_encode: which entries the cache encodes (:func:`~medsaga.train.embedding_cache.plan_cache`):
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
    if settings.cache_views < 0:
        raise ValueError(f"cache_views must be 0 (no cache) or more, got {settings.cache_views}")
    if settings.cache_views and not method.encoder_cacheable:
        raise ValueError(f"method {method.name!r} has no cacheable frozen encoder part (cache_views must be 0)")
    if settings.cache_encode not in ENCODE_MODES:
        raise ValueError(f"cache_encode must be one of {', '.join(ENCODE_MODES)}, got {settings.cache_encode!r}")
    rank = distributed.current()
    if settings.batch_size % rank.world_size:
        raise ValueError(f"batch_size {settings.batch_size} (the global batch) is not divisible by the "
                         f"{rank.world_size} processes")
    # Before checkpointing, so a checkpointed block recomputes the fast forward (either order works:
    # speed_up_encoder re-wraps checkpointed blocks) and before the cache, which it also speeds up.
    if settings.fast_attention:
        speed_up_encoder(image_encoder(model))
    if settings.activation_checkpointing and not method.encoder_frozen:
        checkpoint_encoder_blocks(image_encoder(model))
    if rank.distributed:
        distributed.sync_batch_norms(model)
    model.to(device)
    optimizer = method.build_optimizer(model, settings.lr, settings.weight_decay, decoder_lr=settings.decoder_lr)
    layerwise = bool(getattr(optimizer, "layerwise", False))
    if layerwise:
        check_layerwise_compatible(settings.grad_accum, None, None)
    forward = _TrainingForward(model, method)
    if rank.distributed:
        forward = _distribute(forward, optimizer, layerwise, device)
    # With a time budget, settings.steps is only an upper bound until the budget fixes the total
    # (medsaga.train.time_budget); its factor then follows warmup_poly_lr for that total.
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: time_budget.lr_factor(t))
                 if time_budget is not None
                 else warmup_poly_lr(optimizer, settings.steps, settings.warmup_steps))
    first_step = 0
    metrics_path = run_dir / METRICS_FILE
    if resume:
        first_step = load_training_state(run_dir, method=method, model=model, optimizer=optimizer, scheduler=scheduler,
                                         total_steps=settings.steps)
        if rank.is_main:
            _truncate_metrics(metrics_path, first_step)

    slices_per_step = settings.batch_size * settings.grad_accum
    steps_per_epoch = len(data) / slices_per_step
    peak = PeakMemory(device)  # taken before the cache is built: the cache counts toward the peak
    cache: EmbeddingCache | None = None
    plan: CachePlan | None = None
    if settings.cache_views:
        views, count = settings.cache_views, len(data)
        plan = plan_cache(lambda step: _step_pairs(count, views, settings, step), count=count, views=views,
                          batch_size=settings.batch_size, first_step=first_step, total_steps=settings.steps,
                          # the total is not known before a budget's steps: encode as they read
                          mode="lazy" if time_budget is not None else settings.cache_encode)
        cache = new_cache(model, method, data, views=views, dtype=settings.cache_dtype, encode=cache_encoder,
                          order=plan.order)
        if plan.groups:
            encode_groups(cache, model, method, data, augmenter, plan.groups, device=device,
                          autocast=_autocast(device, settings.precision),
                          progress=getattr(observer, "on_cache_progress", None))
    lazy = plan is not None and plan.mode == "lazy"
    lazy_seconds = 0.0  # encoding inside the loop (a lazy cache): not step time
    parameter_dtype = next(model.parameters()).dtype
    observer.on_start(settings.steps, first_step, steps_per_epoch)
    autocast = _autocast(device, settings.precision)
    activations = SavedActivationMeter(model)
    gradients = GradientMeter(model)
    validation: list[float] = []
    profiled_step = settings.tensor_peak_step
    if profiled_step is None:
        profiled_step = first_step + 1 if first_step + 1 < settings.steps else first_step
    tensor_peak: dict[str, Any] | None = None
    model.train()
    started = time.perf_counter()
    if time_budget is not None:
        time_budget.steps_begin()  # the time so far (reading, model, cache) counted toward the budget
        if lazy:  # the encoding the remaining steps will do, for the total the budget fixes
            time_budget.future_encodes = lambda next_step: plan.future_encodes(next_step, cache)
    loss_value = math.nan
    writes = rank.is_main and save_state  # only rank 0 writes the run folder
    # The step of the newest checkpoint on disk (every rank tracks it: the divergence line names it).
    last_checkpoint: int | None = first_step if resume else None
    with (open(metrics_path, "a", encoding="utf-8") if rank.is_main else open(os.devnull, "w")) as metrics:
        for step in range(first_step, settings.steps):
            if step >= settings.steps:  # a time budget fixed the total below the upper bound
                break
            encode_seconds, encoded = 0.0, 0
            if lazy:  # this step's pairs the cache does not hold yet, before (and timed apart from) the step
                assert plan is not None and cache is not None
                groups = plan.step_groups(step, cache)
                if groups:
                    # On the budget's own clock (wall, or this process's CPU seconds) for the budget.
                    before = time_budget.clock() if time_budget is not None else 0.0
                    seconds, encoded = encode_groups(cache, model, method, data, augmenter, groups, device=device,
                                                     autocast=autocast)
                    lazy_seconds += seconds
                    encode_seconds = time_budget.clock() - before if time_budget is not None else seconds
            step_started = time.perf_counter()
            torch.manual_seed(_mix(settings.seed, step))  # noise inside methods (Conv-LoRA's gate)
            # Before the profiled step begins: the last step's gradients are not held between steps.
            optimizer.zero_grad(set_to_none=True)
            gradients.gradients_freed()
            meter: StepTensorPeak | None = None
            if step == profiled_step and device.type != "cuda":  # on CUDA the peak is tensor bytes already
                # The embedding cache is not counted: it lives in host memory on every device (the
                # cached rows a step uses are, as the copies it makes of them), so on a GPU it would
                # not be in max_memory_allocated either; report.json gives its bytes apart.
                meter = StepTensorPeak(optimizer_state_bytes(optimizer))
            with meter or contextlib.nullcontext():
                loss_total = _step(forward, model, method, data, settings, optimizer, augmenter, cache, autocast,
                                   activations, device, parameter_dtype, step)
            if meter is not None:
                tensor_peak = meter.describe(step + 1)
            if (time_budget is not None and not time_budget.resolved
                    and time_budget.step_done(step + 1, encode_seconds=encode_seconds, encoded=encoded) is not None):
                # Before scheduler.step(): the next step's lr is already the fitted schedule's.
                settings = replace(settings, steps=time_budget.total_steps, warmup_steps=time_budget.warmup_steps)
                if hasattr(observer, "on_total_steps"):
                    observer.on_total_steps(settings.steps)
            # The one place a diverged run stops: before its metrics line, checkpoint or trained weights.
            checkpoint_due = save_state and _checkpoint_due(settings, step)
            failure = _not_finite(loss_total, method, model,
                                  check_weights=checkpoint_due or step + 1 == settings.steps)
            if failure is not None:
                metrics.flush()
                raise InputError(_diverged_message(step + 1, failure, run_dir, last_checkpoint, settings))
            scheduler.step()
            loss_value = loss_total
            elapsed = time.perf_counter() - step_started
            lr = optimizer.param_groups[0]["lr"]
            metrics.write(json.dumps({"step": step + 1, "loss": round(loss_value, 6), "lr": lr,
                                      "seconds": round(elapsed, 4)}) + "\n")
            observer.on_step(step + 1, loss_value, lr, slices_per_step / max(elapsed, 1e-9))
            epoch_done = math.floor((step + 1) / steps_per_epoch) > math.floor(step / steps_per_epoch)
            if validator is not None and rank.is_main and (epoch_done or step + 1 == settings.steps):
                dice = validator(model)
                validation.append(dice)
                observer.on_validation(len(validation), dice)
                model.train()
            if checkpoint_due:
                if writes:
                    metrics.flush()
                    _save_checkpoint(run_dir, step=step + 1, method=method, model=model, optimizer=optimizer,
                                     scheduler=scheduler)
                last_checkpoint = step + 1
    wall = time.perf_counter() - started - lazy_seconds  # the steps' time; the cache's is its build_seconds
    if writes:
        _save_checkpoint(run_dir, step=settings.steps, method=method, model=model, optimizer=optimizer,
                         scheduler=scheduler)
    gradients.remove()
    frozen_bytes, trainable_bytes = parameter_bytes(model)
    trainable, total = count_parameters(model)
    slices = (settings.steps - first_step) * slices_per_step
    memory = MemoryBreakdown(frozen_bytes, trainable_bytes, gradients.peak, optimizer_state_bytes(optimizer),
                             activations.peak)
    cache_report = None
    if cache is not None and plan is not None:
        if plan.read is None:  # lazy: the run's length is known now
            plan.read = len(distinct_reads(plan.step_reads, first_step, settings.steps, plan.entries))
        cache_report = {**cache.describe(), "encode": plan.mode, "read": plan.read,
                        "summary": plan.summary(settings.steps - first_step, slices_per_step, cache.encoded),
                        "slices_per_second_including_build": slices / max(wall + cache.build_seconds, 1e-9)}
    peak_memory = peak.describe()
    if device.type == "cuda":  # max_memory_allocated counts tensor bytes already
        tensor_peak = {"kind": "cuda max_memory_allocated", "bytes": peak_memory["peak_above_baseline_bytes"],
                       "measured": True}
    per_rank = None
    if rank.distributed:
        per_rank = {**rank.to_json(), "ranks": distributed.gather_objects(
            {"rank": rank.rank, "peak_memory": peak_memory, "tensor_peak": tensor_peak})}
    return TrainResult(settings.steps, first_step, slices, wall, slices / max(wall, 1e-9), loss_value, trainable,
                       total, memory, peak_memory, validation, cache_report, tensor_peak, per_rank)


class _TrainingForward(nn.Module):
    """Images or cached frozen outputs → logits ``(b, C+1, S/4, S/4)``: the one forward DDP wraps
    (DDP reduces gradients only of what runs through its own ``forward``)."""

    def __init__(self, model: nn.Module, method: TuningMethod) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, images: torch.Tensor | None, cached_output: torch.Tensor | None) -> torch.Tensor:
        if cached_output is not None:
            return self.method.forward_from_frozen(self.model, cached_output, images)
        assert images is not None
        return _forward(self.model, self.method, images)


def _distribute(forward: _TrainingForward, optimizer: torch.optim.Optimizer, layerwise: bool,
                device: torch.device) -> nn.Module:
    """The step's forward under torchrun: DDP, or, for a layer-wise optimizer, the bare forward
    with each gradient averaged over the ranks inside the optimizer's hook before its update."""
    from torch.nn.parallel import DistributedDataParallel

    if layerwise:
        # DDP's constructor broadcasts rank 0's weights; without DDP, do the same by hand.
        with torch.no_grad():
            for parameter in forward.parameters():
                torch.distributed.broadcast(parameter.data, src=0)
        optimizer.reduce_gradient = distributed.average_gradient_  # type: ignore[attr-defined]
        return forward
    # broadcast_buffers off: the only buffers training changes are BatchNorm statistics, which
    # CrossRankBatchNorm2d keeps equal on every rank; find_unused_parameters because a method may
    # leave trainable parts out of a step (the prompt encoder's unused embeddings, Conv-LoRA's experts).
    return DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False, find_unused_parameters=True)


def _step(forward: nn.Module, model: nn.Module, method: TuningMethod, data: TrainingSlices, settings: LoopSettings,
          optimizer: torch.optim.Optimizer, augmenter: Augmenter, cache: EmbeddingCache | None,
          autocast: contextlib.AbstractContextManager[Any], activations: SavedActivationMeter,
          device: torch.device, parameter_dtype: torch.dtype, step: int) -> float:
    """One optimizer step (``grad_accum`` forward/backward passes, then ``optimizer.step()``); its mean loss
    (over all ranks: the single-process loss of the global batch)."""
    rank = distributed.current()
    share = rank.shard(settings.batch_size)
    loss_total = 0.0
    for micro in range(settings.grad_accum):
        samples = _samples(len(data), settings.seed, step, micro, settings.batch_size, settings.grad_accum)[share]
        cached_output: torch.Tensor | None = None
        if cache is None:
            images, labels = augmenter(*data.batch([position for _, position in samples]),
                                       step=step * settings.grad_accum + micro, first_position=share.start)
        else:
            cached_output, images, labels = cache.batch(
                [(position, _view(len(data), cache.views, settings.seed, epoch, position))
                 for epoch, position in samples])
            cached_output = cached_output.to(device=device, dtype=parameter_dtype) if cached_output is not None else None
        images = images.to(device) if images is not None else None
        labels = labels.to(device)
        # DDP reduces gradients on the last micro-batch only (it sums into .grad until then).
        last = micro == settings.grad_accum - 1
        sync = forward.no_sync() if hasattr(forward, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            with autocast, activations.measure():
                logits = forward(images, cached_output)
                loss = segmentation_loss(logits, labels)
                auxiliary = method.auxiliary_loss(model)
                if auxiliary is not None:
                    loss = loss + auxiliary
            (loss / settings.grad_accum).backward()
        loss_total += loss.item() / settings.grad_accum
    optimizer.step()
    return distributed.mean_over_ranks(loss_total)


def _forward(model: nn.Module, method: TuningMethod, images: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, C+1, S/4, S/4)``; a frozen encoder runs without building a graph."""
    if method.encoder_frozen:
        with torch.no_grad():
            embeddings = model.encode(images)
        return model.decode(embeddings)
    return model(images)


def _checkpoint_due(settings: LoopSettings, step: int) -> bool:
    """Whether a resumable checkpoint follows the 0-based ``step`` (the last step's is written after
    the loop): after the run's first step, so a run killed early can still be resumed, then every
    ``checkpoint_every`` steps; never with ``checkpoint_every`` 0 (only at the end)."""
    done = step + 1
    return bool(settings.checkpoint_every) and done < settings.steps and (
        done == 1 or done % settings.checkpoint_every == 0)


def _not_finite(loss: float, method: TuningMethod, model: nn.Module, *, check_weights: bool) -> str | None:
    """What is not finite after a step, or ``None``: the loss (every step), and, where the step's
    weights are about to be written (``check_weights``), the tensors the method trained (a finite
    loss can still come with an overflowing update)."""
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if check_weights:
        bad = [name for name, tensor in method.trained_state(model).items()
               if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
        if bad:
            return f"loss is {loss:.4g} but {len(bad)} trained tensor(s) are not finite ({bad[0]}, ...)"
    return None


def _diverged_message(step: int, failure: str, run_dir: Path, last_checkpoint: int | None,
                      settings: LoopSettings) -> str:
    """The one line a diverged run stops with: the step, what went wrong, what is kept, what to try."""
    kept = (f"the last good checkpoint is at step {last_checkpoint} in {run_dir / CHECKPOINT_DIR}"
            if last_checkpoint is not None else "no checkpoint was written")
    rates = f"{settings.lr:g}" + (f", decoder {settings.decoder_lr:g}" if settings.decoder_lr is not None else "")
    return f"step {step}: {failure}; {kept}; lower --lr / --decoder-lr (this run: {rates}) and start again with --force"


def _samples(count: int, seed: int, step: int, micro: int, batch_size: int,
             grad_accum: int) -> list[tuple[int, int]]:
    """``(epoch, slice position)`` of each sample of one micro-batch: a fresh permutation of all
    slices every epoch (the epoch also picks the cached view, :func:`view_schedule`)."""
    first = (step * grad_accum + micro) * batch_size
    samples = []
    for sample in range(first, first + batch_size):
        epoch, offset = divmod(sample, count)
        samples.append((epoch, int(_epoch_order(count, seed, epoch)[offset])))
    return samples


def _view(count: int, views: int, seed: int, epoch: int, position: int) -> int:
    """The cached view slice ``position`` is trained on in ``epoch``."""
    return int(view_schedule(count, views, seed, epoch)[position])


def _step_pairs(count: int, views: int, settings: LoopSettings, step: int) -> list[list[Pair]]:
    """The (slice, view) pairs each micro-batch of ``step`` reads from the cache (the global batch)."""
    return [[(position, _view(count, views, settings.seed, epoch, position))
             for epoch, position in _samples(count, settings.seed, step, micro, settings.batch_size,
                                              settings.grad_accum)]
            for micro in range(settings.grad_accum)]


_ORDER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def _epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    key = (count, seed, epoch)
    if key not in _ORDER_CACHE:
        if len(_ORDER_CACHE) > 8:
            _ORDER_CACHE.clear()
        _ORDER_CACHE[key] = np.random.default_rng([seed, epoch]).permutation(count)
    return _ORDER_CACHE[key]


def _mix(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 1) % (2**63)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _save_checkpoint(run_dir: Path, **state: Any) -> None:
    """:func:`save_training_state`, with a failed write (disk full, read-only) as one line naming the
    checkpoint folder (:func:`medsaga.io.atomic.write_errors`). The checkpoint is swapped in by
    renames, so the previous one stays whole; the scratch folder left behind is never read and is
    cleared by the next save."""
    with write_errors(run_dir / CHECKPOINT_DIR):
        save_training_state(run_dir, **state)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines an interrupted run wrote after its last checkpoint (they will be redone)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
            and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
