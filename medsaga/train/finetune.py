"""``medsaga finetune`` as a library call: options in, a run folder and its report out.

Order matters for the user: every check that can fail on bad input (options, device, dataset
layout, shots, labels, the checkpoint's kind) runs before the long work (reading every case,
building the model, training).

Under ``torchrun`` every rank runs this function: each checks the options and reads the cases
(they all need every slice: each step's global batch is drawn from all of them), rank 0 alone
creates the run folder and writes config, checkpoints, trained weights and report, and the
others show nothing (see :mod:`medsaga.distributed` and :mod:`medsaga.train.loop`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from medsaga import __version__, distributed
from medsaga.data.dataset import Dataset, discover_dataset
from medsaga.data.slices import MODES
from medsaga.data.slicing import check_plane
from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output
from medsaga.io.paths import check_owned_folder, ensure_writable_folder, new_owned_folder
from medsaga.methods import TuningMethod, count_parameters, create_method, save_trained
from medsaga.methods.base import encoder_backbone
from medsaga.option_checks import check_fraction, check_int, check_non_negative, check_positive
from medsaga.model.backbone import backbone_of
from medsaga.model.build import check_image_size
from medsaga.model.registry import LITEMEDSAM, get_model_type
from medsaga.train.allocator import malloc_wanted, tune_malloc
from medsaga.train.augment import AugmentSettings, Augmenter
from medsaga.train.data import LabelMapping, SliceSettings, TrainingSlices, default_presets, label_mapping, load_case_stacks
from medsaga.train.embedding_cache import (DEFAULT_VIEWS, available_memory_bytes, cache_entry_bytes, check_cache_mode,
                                           check_cache_settings, effective_views, frozen_module_name, use_cache)
from medsaga.plan.run import gpu_memory_bytes
from medsaga.train.memory_profile import LEAN, MemoryProfile, resolve_memory_profile
from medsaga.train.loop import LoopSettings, SilentObserver, TrainingObserver, TrainResult, train
from medsaga.train.resume import check_resumable
from medsaga.train.shots import CaseSplit, choose_cases
from medsaga.train.time_budget import StepBudget, parse_duration
from medsaga.train.validation import SliceDiceValidator

CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"
DEFAULT_EPOCHS = 10
# The model when neither --model nor --checkpoint is given: the installed pretrained LiteMedSAM.
DEFAULT_MODEL = LITEMEDSAM
# The loop's upper bound on the steps of a --time-budget run, until the budget fixes the total.
BUDGET_STEP_LIMIT = 10**9
BUDGET_CLOCKS = ("wall", "cpu")
# The image encoder's attention: "fast" skips the work on window padding (exact, see
# medsaga.model.fast_attention); "sam" is segment-anything's own padded-window attention.
ATTENTIONS = ("fast", "sam")


@dataclass(frozen=True)
class FinetuneOptions:
    """Everything ``medsaga finetune`` takes (see ``medsaga finetune --help``)."""

    data_dir: Path
    out: Path
    shots: int = 5
    cases: tuple[str, ...] = ()
    selection: dict[str, Any] | None = None  # where ``cases`` came from: a ``medsaga select`` file (case_list)
    val: int = 0
    method: str = "galore"
    method_options: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None
    model: str | None = None
    random_init: bool = False
    image_size: int | None = None  # None: the model type's default (a checkpoint alone: once its type is read)
    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None
    decoder_lr: float | None = None
    weight_decay: float | None = None
    warmup_fraction: float = 0.05
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    activation_checkpointing: bool | None = None  # None: as the memory profile says (lean: on where the encoder trains)
    speed: bool = False  # trade the lean memory defaults for time (medsaga.train.memory_profile)
    plane: str = "axial"
    slice_mode: str | None = None
    intensity: str | None = None
    empty_ratio: float = 0.25
    augment: bool = True
    checkpoint_every: int = 100
    cache_embeddings: str = "auto"
    cache_views: int = DEFAULT_VIEWS
    cache_dtype: str = "fp32"
    attention: str = "fast"
    gpu_memory: str | None = None  # e.g. "12GiB": plan the run's peak first and refuse if it does not fit
    time_budget: str | None = None  # e.g. "20m": train for this wall-clock time (medsaga.train.time_budget)
    # What the budget counts: "wall" (the user's wait) or "cpu" (this process's CPU seconds, all its
    # threads: a benchmark's fair share on a machine shared with other jobs)
    time_budget_clock: str = "wall"
    force: bool = False


class FinetuneReporter(TrainingObserver, Protocol):
    """What the command shows besides the training progress."""

    def info(self, message: str) -> None: ...

    def on_case_loaded(self, case_id: str, done: int, total: int) -> None: ...


@dataclass
class FinetuneOutcome:
    run_dir: Path
    method: TuningMethod
    split: CaseSplit
    result: TrainResult
    report: dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without CUDA is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: this machine has no usable CUDA device (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` → bf16 autocast on a CUDA device that supports it, else fp32 (CPU bf16 is slower)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name not in ("fp32", "bf16"):
        raise InputError(f"--precision must be auto, fp32 or bf16, got {name!r}")
    return name


@dataclass(frozen=True)
class CheckedInputs:
    """What :func:`check_inputs` resolved: the options with their weights and size filled in, and
    everything the run needs that could fail on bad input."""

    options: FinetuneOptions
    device: torch.device
    precision: str
    gpu_memory: int | None
    profile: MemoryProfile
    method: TuningMethod
    dataset: Dataset
    mapping: LabelMapping
    split: CaseSplit


def check_inputs(options: FinetuneOptions, *, resume: bool = False, world_size: int = 1) -> CheckedInputs:
    """Every check on the options, the dataset, the shots and the run folder that needs no heavy
    work (no case read, no model built); an :class:`InputError` for the first that fails.

    ``world_size``: the processes that will share each global batch (``medsaga finetune --nproc``
    calls this before it launches them, so bad input stops with one line, not N tracebacks).
    """
    _check_numbers(options)
    if resume:  # a missing or tampered checkpoint: one line now, not after every case is read
        check_resumable(options.out, total_steps=options.steps)
    check_plane(options.plane)
    if options.slice_mode is not None and options.slice_mode not in MODES:
        raise InputError(f"--slice-mode must be one of {', '.join(MODES)}, got {options.slice_mode!r}")
    if options.time_budget_clock not in BUDGET_CLOCKS:
        raise InputError(f"--time-budget-clock must be {' or '.join(BUDGET_CLOCKS)}, "
                         f"got {options.time_budget_clock!r}")
    if options.time_budget is not None:
        parse_duration(options.time_budget)
        if options.epochs is not None or options.steps is not None:
            raise InputError("give --time-budget or --steps/--epochs, not both: the budget sets the steps")
        if world_size > 1 or distributed.current().distributed:  # each rank's clock would fix its own total
            raise InputError("--time-budget trains in one process: leave out --nproc / torchrun")
    if options.epochs is not None and options.steps is not None:
        raise InputError("give --epochs or --steps, not both")
    if options.attention not in ATTENTIONS:
        raise InputError(f"--attention must be one of {', '.join(ATTENTIONS)}, got {options.attention!r}")
    if options.batch_size % world_size:
        raise InputError(f"--batch-size {options.batch_size} is the global batch and must be divisible by the "
                         f"{world_size} processes")
    device = distributed.device_for(distributed.current(), resolve_device(options.device))
    precision = resolve_precision(options.precision, device)
    gpu_memory = gpu_memory_bytes(options.gpu_memory)
    profile = resolve_memory_profile(options.method, options.method_options, speed=options.speed,
                                     activation_checkpointing=options.activation_checkpointing,
                                     grad_accum=options.grad_accum)
    method = create_method(options.method, profile.method_options)
    try:
        check_cache_settings(options.cache_views, options.cache_dtype)
        check_cache_mode(options.cache_embeddings, method)
    except ValueError as error:
        raise InputError(str(error)) from None
    dataset = discover_dataset(options.data_dir)
    mapping = label_mapping(dataset)
    split = choose_cases(dataset, options.shots, options.seed, cases=options.cases, val=options.val)
    options = _resolve_weights(options)
    if not distributed.current().is_main:
        pass  # rank 0 alone checks and makes the run folder: by the time another rank looks, it exists
    elif not resume:
        check_owned_folder(options.out, force=options.force, kind="run", inputs=_input_paths(options, dataset),
                           resume_hint=", or --resume to continue it")
    else:  # the checkpoints and the report go on into it
        ensure_writable_folder(options.out, "--resume")
    return CheckedInputs(options, device, precision, gpu_memory, profile, method, dataset, mapping, split)


def _check_numbers(options: FinetuneOptions) -> None:
    """The numeric options' ranges (:mod:`medsaga.option_checks`): one line naming the option and the
    value. NaN, infinities and negative rates would otherwise train (to NaN weights) and exit 0."""
    if options.image_size is not None:
        check_image_size(options.image_size, "--image-size")
    for name, count in (("--batch-size", options.batch_size), ("--grad-accum", options.grad_accum),
                        ("--epochs", options.epochs), ("--steps", options.steps)):
        if count is not None:
            check_int(name, count, at_least=1)
    # The seed feeds numpy's default_rng, which refuses negative seeds (a traceback in the first step).
    check_int("--seed", options.seed, at_least=0)
    check_int("--checkpoint-every", options.checkpoint_every, at_least=0)
    for name, rate in (("--lr", options.lr), ("--decoder-lr", options.decoder_lr)):
        if rate is not None:
            check_positive(name, rate)
    if options.weight_decay is not None:
        check_non_negative("--weight-decay", options.weight_decay)
    check_fraction("--warmup", options.warmup_fraction)
    check_non_negative("--empty-ratio", options.empty_ratio)


def finetune(options: FinetuneOptions, reporter: FinetuneReporter, *, resume: bool = False,
             clock: Callable[[], float] = time.perf_counter) -> FinetuneOutcome:
    """Run (or, with ``resume``, continue) a fine-tuning; returns the outcome with its report."""
    if options.time_budget_clock == "cpu":
        clock = time.process_time
    run_started = clock()  # a --time-budget counts from here: reading and the cache are part of the wait
    rank = distributed.init_from_environment(options.device)
    if not rank.is_main:
        reporter = SilentReporter()
    # --- checks that need no heavy work ---------------------------------------------------------
    checked = check_inputs(options, resume=resume, world_size=rank.world_size)
    options, device, precision, gpu_memory = checked.options, checked.device, checked.precision, checked.gpu_memory
    profile, method, dataset, mapping, split = (checked.profile, checked.method, checked.dataset, checked.mapping,
                                                checked.split)
    for warning in dataset.warnings:
        reporter.info(f"warning: {warning}")
    model_type = options.model

    # --- the model (reads the checkpoint: a clear error if it is the wrong kind) ---------------
    # A checkpoint alone: its type is read with the file, after this; the ViTs' answer until then.
    if device.type == "cpu" and malloc_wanted(get_model_type(model_type or "vit_b").backbone.tune_cpu_malloc):
        tune_malloc()  # before any training tensor: the report's peak RSS is then the tensors', not glibc's heap
    torch.manual_seed(options.seed)
    model, model_type, checkpoint_info = _build_model(options, model_type, mapping.num_classes)
    options = replace(options, image_size=model.image_size)  # a checkpoint alone: its type's default size
    # Counted before the method wraps anything: SAM-PARSER turns the weights it decomposes into
    # frozen buffers, which would make "trainable of total" compare against a shrunken total.
    base_parameters = count_parameters(model)[1]
    method.prepare(model)
    memory_plan = None
    if rank.is_main and (gpu_memory is not None or device.type == "cuda"):
        memory_plan = _plan_own_run(options, profile, model_type, mapping.num_classes, device, precision, gpu_memory,
                                    reporter)

    # --- data: every chosen case is read and checked before anything is written ----------------
    settings = SliceSettings(plane=options.plane,
                             mode=options.slice_mode or ("repeat" if len(dataset.channel_names) == 1 else "modalities"),
                             presets=default_presets(dataset, options.intensity), image_size=options.image_size,
                             empty_ratio=options.empty_ratio)
    total_cases = len(split.train) + len(split.val)
    loaded = [0]

    def case_loaded(case_id: str) -> None:
        loaded[0] += 1
        reporter.on_case_loaded(case_id, loaded[0], total_cases)

    stacks = load_case_stacks(dataset, split.train, settings, mapping, options.seed, case_loaded)
    data = TrainingSlices(stacks, options.image_size)
    validator = None
    if split.val:
        val_stacks = load_case_stacks(dataset, split.val, settings, mapping, options.seed, case_loaded)
        validator = SliceDiceValidator(val_stacks, options.image_size, mapping.num_classes, options.batch_size, device)

    reporter.info(f"shots ({len(split.train)}): {', '.join(split.train)}"
                  + (f"; validation ({len(split.val)}): {', '.join(split.val)}" if split.val else ""))
    if options.checkpoint is None:
        why = "--random-init" if options.random_init else "no --checkpoint"
        reporter.info(f"model {model_type} at {options.image_size} px with random weights ({why}): fine for tests "
                      "and benchmarks, not for "
                      "real segmentation")
    elif checkpoint_info is not None and checkpoint_info.get("packaged"):
        reporter.info(f"model {model_type} at {options.image_size} px from {checkpoint_info['packaged']} "
                      f"({Path(checkpoint_info['path']).name}, SHA-256 verified)")

    slices_per_step = options.batch_size * options.grad_accum
    steps = options.steps if options.steps is not None else math.ceil(
        (options.epochs or DEFAULT_EPOCHS) * len(data) / slices_per_step)
    time_budget, budget_record = _time_budget(options, resume, clock, run_started)
    if budget_record is not None:  # resumed: the total its budget fixed
        steps = budget_record["resolved_steps"]
    elif time_budget is not None:  # an upper bound until the budget fixes the total
        steps = BUDGET_STEP_LIMIT
    cache_views = effective_views(options.cache_views, options.augment)
    encoder, backbone = encoder_backbone(model)
    # The cache holds at most what the steps read (medsaga.train.embedding_cache.plan_cache).
    cache_bytes = min(len(data) * cache_views, steps * slices_per_step) * cache_entry_bytes(
        backbone.embedding_shape(encoder), options.image_size, options.cache_dtype, method.cache_needs_images)
    available = available_memory_bytes()
    # Half of what the machine has free now: the model, the batches and the activations need the rest.
    budget = available // 2 if available is not None else None
    if not use_cache(options.cache_embeddings, method, samples=steps * slices_per_step,
                     entries=len(data) * cache_views, cache_bytes=cache_bytes, memory_budget=budget,
                     lean=profile.name == LEAN):
        cache_views = 0
    lr = options.lr if options.lr is not None else default_learning_rate(method, model)
    decoder_lr = options.decoder_lr if options.decoder_lr is not None else backbone.decoder_learning_rate
    loop = LoopSettings(steps=steps, batch_size=options.batch_size, grad_accum=options.grad_accum,
                        lr=lr, decoder_lr=decoder_lr,
                        weight_decay=options.weight_decay if options.weight_decay is not None
                        else method.default_weight_decay,
                        warmup_steps=0 if time_budget is not None else budget_record["warmup_steps"]
                        if budget_record is not None else int(round(options.warmup_fraction * steps)),
                        seed=options.seed,
                        precision=precision, activation_checkpointing=profile.activation_checkpointing,
                        checkpoint_every=options.checkpoint_every, cache_views=cache_views,
                        cache_dtype=options.cache_dtype, fast_attention=options.attention == "fast",
                        # a budget's steps are not known before they run: each encodes what it reads
                        cache_encode="lazy" if options.time_budget is not None else "read")
    augment = AugmentSettings(enabled=options.augment)
    cache = _cache_config(options, model, method, cache_views)
    if cache_views and profile.name == LEAN:  # the cache is decided here, once its size is known
        profile = replace(profile, applied=(*profile.applied, "embedding_cache"))
    memory_profile = {"profile": profile.name, "applied": list(profile.applied), "notes": list(profile.notes)}
    config = _config(options, dataset, mapping, split, settings, loop, augment, method, model_type,
                     checkpoint_info, device, len(data), cache, memory_profile)
    if not resume and rank.is_main:
        # The run folder is made with its first output: a previous run it replaces (--force) is
        # deleted only once config.json is written, and put back if that fails.
        with new_owned_folder(options.out, "run"):
            _write_json(options.out / CONFIG_FILE, config)
    distributed.barrier()  # the run folder exists (and a resumed one is untouched) before any rank goes on
    if time_budget is not None:
        time_budget.on_resolved = _record_budget(options.out / CONFIG_FILE, config, rank.is_main, reporter,
                                                 options.time_budget_clock)
        reporter.info(f"time budget {time_budget.seconds:g} s: the steps are fixed after timing the first "
                      f"{time_budget.probe_steps}, so that training ends within it")
    reporter.info(f"{len(data)} training slices, "
                  + (f"steps of {slices_per_step} slices, " if time_budget is not None else
                     f"{steps} steps of {slices_per_step} slices ({steps * slices_per_step / len(data):.1f} epochs), ")
                  + f"{method.name}, lr {lr:g}"
                  + (f" (the method's {method.default_lr:g}, capped for this encoder)"
                     if options.lr is None and lr != method.default_lr else "")
                  + (f", decoder lr {decoder_lr:g}" if decoder_lr is not None else "")
                  + f", {device.type}, {precision}")
    reporter.info(profile.describe())
    for note in profile.notes:
        reporter.info(note)
    if time_budget is None and not resume and not rank.distributed:  # a budget says the time itself
        from medsaga.train.time_estimate import estimate_run

        reporter.info(estimate_run(model, data, loop, method, device).describe())
    if cache_views:
        reporter.info(f"embedding cache: of {len(data)} slices x {cache_views} fixed view{'s' * (cache_views > 1)} "
                      f"(view 0 unaugmented), only the slice-views the steps read go through the frozen "
                      f"{cache['frozen_module']}, once"
                      + (" each, as a step first reads them" if time_budget is not None or budget_record is not None
                         else f" (at most {min(len(data) * cache_views, steps * slices_per_step)}, before the "
                              "first step)")
                      + "; every step trains on the cache" + ("" if options.augment else " (--no-augment: one view)"))
    elif method.encoder_cacheable and options.cache_embeddings == "auto":
        if budget is not None and cache_bytes > budget:
            reporter.info(f"embedding cache off (auto): it would hold {cache_bytes / 2**30:.1f} GiB, more than half of "
                          f"the {available / 2**30:.1f} GiB this machine has free; --cache-dtype fp16 or fewer "
                          "--cache-views shrink it, --cache-embeddings on forces it")
        else:  # only --speed weighs the cache's build against the run's length
            reporter.info(f"embedding cache off (auto, --speed): this run trains on {steps * slices_per_step} "
                          "slices, fewer "
                          f"than the {len(data) * effective_views(options.cache_views, options.augment)} views the "
                          "cache would encode first; --cache-embeddings on forces it")

    # --- train ------------------------------------------------------------------------------------
    result = train(model, method, data, loop, options.out, reporter, Augmenter(augment, options.seed),
                   device=device, resume=resume, validator=validator, time_budget=time_budget)
    result.total_parameters = base_parameters
    if rank.is_main:
        save_trained(method, model.cpu(), options.out)
    report = {"medsaga_version": __version__, "method": method.name, "device": str(device),
              "precision": precision, "model_type": model_type, "image_size": options.image_size,
              "cache_embeddings": bool(cache_views), "memory_profile": memory_profile, "memory_plan": memory_plan,
              "train_cases": list(split.train), "val_cases": list(split.val), **result.to_json(),
              "time_budget": time_budget.describe() if time_budget is not None else budget_record}
    if rank.is_main:
        _write_json(options.out / REPORT_FILE, report)
        from medsaga.report import write_run_report

        write_run_report(options.out)  # report.html: the settings, curves and memory of the files above
    distributed.barrier()  # no rank returns (and, in a test, reads the folder) before rank 0 wrote it
    return FinetuneOutcome(options.out, method, split, result, report)


def _plan_own_run(options: FinetuneOptions, profile: MemoryProfile, model_type: str, num_classes: int, device: torch.device,
                  precision: str, gpu_memory: int | None, reporter: FinetuneReporter) -> dict[str, Any]:
    """The memory plan of this run's own settings (:mod:`medsaga.plan`), printed before any long work;
    an :class:`InputError` when ``--gpu-memory`` is given and the predicted peak does not fit."""
    from medsaga.plan.run import config_of, default_profiled_sizes, fit_config

    config = config_of(options.method, profile, precision=precision, cache_allowed=options.cache_embeddings != "off")
    sizes = default_profiled_sizes(model_type)
    fitted, _ = fit_config(config, model_type=model_type, num_classes=num_classes, sizes=sizes, device=device)
    # Each GPU holds its share of the global batch.
    prediction = fitted.predict(options.image_size, options.batch_size // distributed.current().world_size)
    gib = 2**30
    text = (f"predicted GPU peak {prediction.peak_bytes / gib:.2f} GiB at batch {options.batch_size}, "
            f"{options.image_size} px (weights {prediction.model_bytes / gib:.2f}, optimizer "
            f"{prediction.optimizer_bytes / gib:.2f}, gradients etc. {prediction.fixed_bytes / gib:.2f}, "
            f"activations {prediction.activation_bytes / gib:.2f})")
    plan: dict[str, Any] = {"prediction": prediction.to_json(), "gpu_memory_bytes": gpu_memory, "fits": None,
                            "largest_batch": None, "profiled_sizes": list(sizes)}
    if gpu_memory is not None:
        largest = fitted.largest_batch(options.image_size, gpu_memory)
        plan.update(fits=prediction.peak_bytes <= gpu_memory, largest_batch=largest)
        if not plan["fits"]:
            advice = (f"--batch-size {largest * distributed.current().world_size} fits" if largest else "not even batch 1 fits: a smaller --image-size, "
                      "or another method (medsaga plan compares them)")
            raise InputError(f"--gpu-memory {options.gpu_memory}: {text} does not fit; {advice}")
        text += f"; fits in {options.gpu_memory} (largest batch {largest})"
    reporter.info(f"memory plan: {text}, from steps profiled at {', '.join(map(str, sizes))} px")
    return plan


class SilentReporter(SilentObserver):
    """A :class:`FinetuneReporter` that shows nothing: what a rank other than 0 shows (rank 0
    speaks for the job), and a base for reporters that only watch."""

    def info(self, message: str) -> None:
        pass

    def on_case_loaded(self, case_id: str, done: int, total: int) -> None:
        pass


def default_learning_rate(method: TuningMethod, model: Any) -> float:
    """The method's default learning rate, at most the image encoder's cap (see
    :attr:`~medsaga.model.backbone.Backbone.learning_rate_cap`)."""
    cap = backbone_of(model.image_encoder).learning_rate_cap
    return method.default_lr if cap is None else min(method.default_lr, cap)


def _resolve_weights(options: FinetuneOptions) -> FinetuneOptions:
    """The model type, base checkpoint and input size a run starts from (cheap checks only:
    :func:`medsaga.model.load.choose_weights`).

    Neither ``--model`` nor ``--checkpoint``: ``--model`` :data:`DEFAULT_MODEL` (LiteMedSAM).
    ``--model litemedsam`` without ``--checkpoint`` takes the installed LiteMedSAM weights (verified
    by size and SHA-256; an :class:`InputError` naming the pip command when they are not installed);
    ``--random-init`` builds the architecture with random weights instead. The input size defaults
    to the model type's own (256 for LiteMedSAM, 512 for the ViTs). With only ``--checkpoint`` the
    model type is read from the file when the model is built, and the size default with it.
    """
    from medsaga.model.load import choose_weights

    if options.checkpoint is None and options.model is None:
        # Neither given: the pretrained medical SAM that installs with medsaga (as TotalSegmentator
        # uses its own weights untold); its absence is the one-line pip command below.
        options = replace(options, model=DEFAULT_MODEL)
    choice = choose_weights(options.model, options.checkpoint, random_init=options.random_init,
                            image_size=options.image_size)
    return replace(options, checkpoint=choice.checkpoint, image_size=choice.image_size)


def options_from_run(run_dir: Path, **overrides: Any) -> FinetuneOptions:
    """The options a run was started with (its config.json), for ``--resume``."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise InputError("not a medsaga run folder (no config.json)", run_dir)
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["options"]
        # Runs from before the embedding cache trained without it: resume them the same way.
        recorded.setdefault("cache_embeddings", "off")
        # ... and with SAM's padded-window attention.
        recorded.setdefault("attention", "sam")
        # ... and without the lean memory defaults: as the options they recorded say, nothing added.
        recorded.setdefault("speed", True)
        options = FinetuneOptions(**{**recorded, "data_dir": Path(recorded["data_dir"]), "out": run_dir,
                                     "checkpoint": Path(recorded["checkpoint"]) if recorded["checkpoint"] else None,
                                     "cases": tuple(recorded["cases"])})
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read the run's options ({error})", path) from None
    return replace(options, **overrides)


def _build_model(options: FinetuneOptions, model_type: str | None, num_classes: int):
    """The segmenter (:func:`medsaga.model.load.load_segmenter`), its type, and config.json's record
    of its base checkpoint (``None``: random weights)."""
    from medsaga.model.load import load_segmenter
    from medsaga.model.packaged_weights import packaged_source
    from medsaga.model.weights import file_digests

    loaded = load_segmenter(model_type, options.checkpoint, num_classes=num_classes, image_size=options.image_size,
                            random_init=options.random_init)
    if loaded.checkpoint is None:
        return loaded.model, loaded.model_type, None
    digests = file_digests(loaded.checkpoint)
    info = {"path": str(Path(loaded.checkpoint).resolve()), "sha256": digests.sha256,
            "size_bytes": digests.size_bytes, "packaged": packaged_source(Path(loaded.checkpoint))}
    return loaded.model, loaded.model_type, info


def _config(options: FinetuneOptions, dataset: Dataset, mapping: LabelMapping, split: CaseSplit,
            settings: SliceSettings, loop: LoopSettings, augment: AugmentSettings, method: TuningMethod,
            model_type: str, checkpoint: dict[str, Any] | None, device: torch.device, slices: int,
            cache: dict[str, Any], memory_profile: dict[str, Any]) -> dict[str, Any]:
    """config.json: everything needed to rebuild the model and repeat the slicing."""
    recorded = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(options).items()}
    recorded["cases"] = list(options.cases)
    return {
        "medsaga_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"type": model_type, "image_size": options.image_size, "num_classes": mapping.num_classes,
                  "checkpoint": checkpoint},
        "classes": {"values": list(mapping.values), "names": list(mapping.names)},
        "dataset": {"root": str(dataset.root.resolve()), "name": dataset.name, "layout": dataset.layout,
                    "channel_names": list(dataset.channel_names), "train_cases": list(split.train),
                    "val_cases": list(split.val), "training_slices": slices, "selection": options.selection},
        "slicing": asdict(settings),
        "method": {"name": method.name, "options": method.options.to_json()},
        "training": asdict(loop),
        "augmentation": asdict(augment),
        "embedding_cache": cache,
        "memory_profile": memory_profile,
        "device": str(device),
        "options": recorded,
    }


def _cache_config(options: FinetuneOptions, model: Any, method: TuningMethod, views: int) -> dict[str, Any]:
    """config.json's ``embedding_cache``: what was asked, and what it resolved to."""
    return {"mode": options.cache_embeddings, "enabled": bool(views), "views": views,
            "dtype": options.cache_dtype if views else None,
            "frozen_module": frozen_module_name(model, method) if views else None}


def _time_budget(options: FinetuneOptions, resume: bool, clock: Callable[[], float],
                 started: float) -> tuple[StepBudget | None, dict[str, Any] | None]:
    """A new run's :class:`StepBudget` (its clock started at ``started``), or, resuming a budgeted
    run, the ``time_budget`` its config.json recorded (the total is kept, not timed again)."""
    if options.time_budget is None:
        return None, None
    if not resume:
        return StepBudget(parse_duration(options.time_budget), warmup_fraction=options.warmup_fraction, clock=clock,
                          started=started), None
    path = options.out / CONFIG_FILE
    recorded = json.loads(path.read_text(encoding="utf-8")).get("time_budget") or {}
    if not recorded.get("resolved_steps"):
        raise InputError("this --time-budget run stopped before its steps were fixed: start it again", path)
    return None, recorded


def _record_budget(path: Path, config: dict[str, Any], writes: bool, reporter: FinetuneReporter,
                   options_clock: str = "wall") -> Callable[[StepBudget], None]:
    """What the budget calls once it fixes the total: config.json gets the total (``training``) and
    the budget's measurements (``time_budget``), so that ``--resume`` continues with them."""

    def record(budget: StepBudget) -> None:
        config["training"].update(steps=budget.total_steps, warmup_steps=budget.warmup_steps)
        config["time_budget"] = {**budget.describe(), "clock": options_clock}
        if writes:
            _write_json(path, config)
        reporter.info(f"time budget: {budget.total_steps} steps at {budget.seconds_per_step():.2f} s a step "
                      f"({budget.setup_seconds:.0f} s before the first step)")

    return record


def _input_paths(options: FinetuneOptions, dataset: Dataset) -> dict[str, Path | None]:
    """Every file or folder the run reads, by what the user calls it: none may lie in the run folder
    (replacing it with --force would delete them)."""
    selection = options.selection or {}
    return {"the input folder": dataset.root, "the --checkpoint": options.checkpoint,
            "the --cases file": Path(selection["file"]) if selection.get("file") else None}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
