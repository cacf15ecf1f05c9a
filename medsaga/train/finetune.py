"""``medsaga finetune`` as a library call: options in, a run folder and its report out.

The run is checked, decided, then executed:

1. :func:`check_inputs`: every check that can fail on bad input (options, device, dataset layout,
   shots, labels, the run folder) before the long work;
2. the model is built (the checkpoint's kind read), the memory plan made by the planner the caller
   hands in (:mod:`medsaga.train.memory_plan`), every case read;
3. :func:`~medsaga.train.run_plan.plan_run` decides the run (pure: steps, rates, cache, loop
   settings), and its :meth:`~medsaga.train.run_plan.RunPlan.config` becomes config.json;
4. the loop (:mod:`medsaga.train.loop`) trains; trained weights, report.json and report.html follow.

Under ``torchrun`` every rank runs this function: each checks the options and reads the cases
(they all need every slice: each step's global batch is drawn from all of them), rank 0 alone
creates the run folder and writes config, checkpoints, trained weights and report, and the
others show nothing (see :mod:`medsaga.distributed` and :mod:`medsaga.train.loop`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from torch import nn

from medsaga import __version__, distributed
from medsaga.data.dataset import Dataset, discover_dataset
from medsaga.data.slices import MODES
from medsaga.data.slicing import check_plane
from medsaga.device import resolve_device, resolve_precision
from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output
from medsaga.io.paths import check_owned_folder, ensure_writable_folder, new_owned_folder
from medsaga.methods import TuningMethod, count_parameters, create_method, save_trained
from medsaga.model.registry import LITEMEDSAM, get_model_type
from medsaga.option_checks import check_memory_size
from medsaga.train.allocator import malloc_wanted, tune_malloc
from medsaga.train.augment import Augmenter
from medsaga.train.data import TrainingSlices, label_mapping, load_case_stacks
from medsaga.train.embedding_cache import check_cache_mode, check_cache_settings
from medsaga.train.loop import SilentObserver, TrainingObserver, TrainResult, train
from medsaga.train.memory_plan import MemoryPlanner, MemoryPlanRequest
from medsaga.train.memory_profile import resolve_memory_profile
from medsaga.train.options import (ATTENTIONS, BUDGET_CLOCKS, CONFIG_FILE, REPORT_FILE, FinetuneOptions,
                                   check_numbers, options_from_run)
from medsaga.train import decoder_warmup
from medsaga.train.embedding_cache import frozen_module_name
from medsaga.train.resume import check_resumable, checkpoint_folder
from medsaga.train.run_messages import announce_inputs, announce_run
from medsaga.train.run_plan import CheckedInputs, RunPlan, gather_facts, plan_run, slice_settings
from medsaga.train.shots import CaseSplit, choose_cases
from medsaga.train.time_budget import StepBudget, parse_duration
from medsaga.train.validation import SliceDiceValidator

# Where the names callers import from here live now (medsaga.device, medsaga.train.options).
__all__ = ["CONFIG_FILE", "DEFAULT_MODEL", "REPORT_FILE", "CheckedInputs", "FinetuneOptions", "FinetuneOutcome",
           "FinetuneReporter", "SilentReporter", "check_inputs", "finetune", "options_from_run", "resolve_device",
           "resolve_precision"]

# The model when neither --model nor --checkpoint is given: the installed pretrained LiteMedSAM.
DEFAULT_MODEL = LITEMEDSAM


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



def check_inputs(options: FinetuneOptions, *, resume: bool = False, world_size: int = 1) -> CheckedInputs:
    """Every check on the options, the dataset, the shots and the run folder that needs no heavy
    work (no case read, no model built); an :class:`InputError` for the first that fails.

    ``world_size``: the processes that will share each global batch (``medsaga finetune --nproc``
    calls this before it launches them, so bad input stops with one line, not N tracebacks).
    """
    check_numbers(options)
    # A missing or tampered checkpoint: one line now, not after every case is read. A run stopped in
    # (or right after) its decoder warm-up has its checkpoint there, or none needed.
    if resume and not (checkpoint_folder(options.out) is None
                       and (decoder_warmup.has_checkpoint(options.out) or decoder_warmup.is_done(options.out))):
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
    gpu_memory = check_memory_size("--gpu-memory", options.gpu_memory)
    profile = resolve_memory_profile(options.method, options.method_options, speed=options.speed,
                                     activation_checkpointing=options.activation_checkpointing,
                                     grad_accum=options.grad_accum)
    method = create_method(options.method, profile.method_options)
    decoder_warmup.check_warmup_option(options.decoder_warmup, method)
    try:
        check_cache_settings(options.cache_views, options.cache_dtype)
        check_cache_mode(options.cache_embeddings, method)
    except ValueError as error:
        raise InputError(str(error)) from None
    dataset = discover_dataset(options.data_dir)
    mapping = label_mapping(dataset)
    split = choose_cases(dataset, options.shots, options.seed, cases=options.cases, val=options.val)
    options = _resolve_weights(options, device)
    if not distributed.current().is_main:
        pass  # rank 0 alone checks and makes the run folder: by the time another rank looks, it exists
    elif not resume:
        check_owned_folder(options.out, force=options.force, kind="run", inputs=_input_paths(options, dataset),
                           resume_hint=", or --resume to continue it")
    else:  # the checkpoints and the report go on into it
        ensure_writable_folder(options.out, "--resume")
    return CheckedInputs(options, device, precision, gpu_memory, profile, method, dataset, mapping, split)


def finetune(options: FinetuneOptions, reporter: FinetuneReporter, *, resume: bool = False,
             clock: Callable[[], float] = time.perf_counter,
             memory_planner: MemoryPlanner | None = None) -> FinetuneOutcome:
    """Run (or, with ``resume``, continue) a fine-tuning; returns the outcome with its report.

    ``memory_planner``: predicts the run's GPU peak before any long work (``medsaga finetune``
    passes :func:`medsaga.plan.own_run.plan_own_run`); it is asked on rank 0 when ``--gpu-memory``
    is given or the run trains on CUDA. ``--gpu-memory`` needs one (a :class:`ValueError` without).
    """
    if options.time_budget_clock == "cpu":
        clock = time.process_time
    run_started = clock()  # a --time-budget counts from here: reading and the cache are part of the wait
    rank = distributed.init_from_environment(options.device)
    if not rank.is_main:
        reporter = SilentReporter()
    # --- checks that need no heavy work ---------------------------------------------------------
    checked = check_inputs(options, resume=resume, world_size=rank.world_size)
    if options.gpu_memory is not None and memory_planner is None:
        raise ValueError("--gpu-memory needs a memory planner: pass memory_planner= (medsaga.plan.own_run.plan_own_run)")
    for warning in checked.dataset.warnings:
        reporter.info(f"warning: {warning}")

    # --- the model (reads the checkpoint: a clear error if it is the wrong kind) ---------------
    # A checkpoint alone: its type is read with the file, after this; the ViTs' answer until then.
    if checked.device.type == "cpu" and malloc_wanted(get_model_type(checked.options.model or "vit_b").backbone.tune_cpu_malloc):
        tune_malloc()  # before any training tensor: the report's peak RSS is then the tensors', not glibc's heap
    torch.manual_seed(checked.options.seed)
    model, model_type, checkpoint_info = _build_model(checked.options, checked.options.model, checked.mapping.num_classes)
    # A checkpoint alone: its type's default size.
    checked = replace(checked, options=replace(checked.options, image_size=model.image_size))
    # Counted before the method wraps anything: SAM-PARSER turns the weights it decomposes into
    # frozen buffers, which would make "trainable of total" compare against a shrunken total.
    base_parameters = count_parameters(model)[1]
    checked.method.prepare(model)
    memory_plan = None
    if memory_planner is not None and rank.is_main and (checked.gpu_memory is not None or checked.device.type == "cuda"):
        answer = memory_planner(_memory_request(checked, model_type, rank.world_size))
        reporter.info(f"memory plan: {answer.summary}")
        memory_plan = answer.record

    # --- data: every chosen case is read and checked before anything is written ----------------
    data, validator = _read_cases(checked, reporter)
    announce_inputs(checked.split, model_type, checked.options, checkpoint_info, reporter)

    # --- decide the run, and record it ---------------------------------------------------------
    time_budget, budget_record = _time_budget(checked.options, resume, clock, run_started)
    facts = gather_facts(model, checked.method, model_type=model_type, training_slices=len(data),
                         checkpoint=checkpoint_info, budget_record=budget_record)
    plan = decoder_warmup.plan_with_warmup(checked, facts,
                                           frozen_module_name(model, decoder_warmup.warmup_method()))
    config = plan.config()
    options = plan.options
    if not resume and rank.is_main:
        # The run folder is made with its first output: a previous run it replaces (--force) is
        # deleted only once config.json is written, and put back if that fails.
        with new_owned_folder(options.out, "run"):
            _write_json(options.out / CONFIG_FILE, config)
    distributed.barrier()  # the run folder exists (and a resumed one is untouched) before any rank goes on
    if time_budget is not None:
        time_budget.on_resolved = _record_budget(options.out / CONFIG_FILE, config, rank.is_main, reporter,
                                                 options.time_budget_clock)
    announce_run(plan, model, data, checked.method, checked.device, time_budget, resume, reporter)

    # --- train ------------------------------------------------------------------------------------
    warmup_record = None
    if plan.warmup is not None:
        warmup_record = _warm_up_decoder(plan, model, data, validator, checked, clock, run_started, resume, reporter)
    return _execute(plan, model, data, validator, checked, time_budget, base_parameters, memory_plan,
                    resume and checkpoint_folder(options.out) is not None, reporter, warmup_record)


def _warm_up_decoder(plan: RunPlan, model: nn.Module, data: TrainingSlices, validator: SliceDiceValidator | None,
                     checked: CheckedInputs, clock: Callable[[], float], run_started: float, resume: bool,
                     reporter: FinetuneReporter) -> dict[str, Any]:
    """The decoder warm-up (:mod:`medsaga.train.decoder_warmup`) in RUN/decoder-warmup/, before the
    run's method trains: skipped when a resumed run finished it (its decoder is loaded instead),
    continued from its checkpoint when it stopped in it. Returns report.json's ``decoder_warmup``."""
    phase, options, rank = plan.warmup, plan.options, distributed.current()
    trainable = decoder_warmup.TrainableFlags(model)
    phase.method.prepare(model)
    record: dict[str, Any] = {"fraction": phase.fraction, "method": phase.method.name,
                              "folder": decoder_warmup.WARMUP_FOLDER}
    if resume and decoder_warmup.is_done(options.out):
        decoder_warmup.load_warmup(phase.method, model, options.out)
        reporter.info("decoder warm-up: done before, its decoder loaded")
        record["resumed"] = "done before"
    else:
        folder = phase.folder(options.out)
        if rank.is_main:
            folder.mkdir(exist_ok=True)
        distributed.barrier()
        budget = None
        if phase.budget_seconds is not None:
            budget = StepBudget(phase.budget_seconds, warmup_fraction=options.warmup_fraction, clock=clock,
                                started=run_started)
        reporter.info(f"decoder warm-up: the mask decoder on the frozen encoder's cached embeddings first, "
                      + (f"for {phase.budget_seconds:.0f} s of the budget" if budget is not None
                         else f"{phase.plan.loop.steps} of the run's steps")
                      + f"; then {checked.method.name} trains the encoder too")
        result = train(model, phase.method, data, phase.plan.loop, folder, reporter,
                       Augmenter(phase.plan.augmentation, options.seed), device=checked.device,
                       resume=resume and decoder_warmup.has_checkpoint(options.out), validator=validator,
                       time_budget=budget)
        if rank.is_main:
            decoder_warmup.save_warmup(phase.method, model, options.out)
        distributed.barrier()
        record.update(steps=result.steps, wall_seconds=result.wall_seconds, final_loss=result.final_loss,
                      time_budget=budget.describe() if budget is not None else None)
    trainable.restore(model)
    return record


def _execute(plan: RunPlan, model: nn.Module, data: TrainingSlices, validator: SliceDiceValidator | None,
             checked: CheckedInputs, time_budget: StepBudget | None, base_parameters: int,
             memory_plan: dict[str, Any] | None, resume: bool, reporter: FinetuneReporter,
             warmup_record: dict[str, Any] | None = None) -> FinetuneOutcome:
    """Train as ``plan`` says; save the trained weights and write report.json and report.html."""
    options, method, device, rank = plan.options, checked.method, checked.device, distributed.current()
    result = train(model, method, data, plan.loop, options.out, reporter, Augmenter(plan.augmentation, options.seed),
                   device=device, resume=resume, validator=validator, time_budget=time_budget)
    result.total_parameters = base_parameters
    if rank.is_main:
        save_trained(method, model.cpu(), options.out)
    report = {"medsaga_version": __version__, "method": method.name, "device": str(device),
              "precision": checked.precision, "model_type": plan.model_type, "image_size": options.image_size,
              "cache_embeddings": bool(plan.cache.views), "memory_profile": plan.memory_profile_record(),
              "memory_plan": memory_plan, "train_cases": list(plan.split.train), "val_cases": list(plan.split.val),
              **result.to_json(),
              "time_budget": time_budget.describe() if time_budget is not None else plan.budget_record,
              "decoder_warmup": warmup_record}
    if rank.is_main:
        _write_json(options.out / REPORT_FILE, report)
        from medsaga.report import write_run_report

        write_run_report(options.out)  # report.html: the settings, curves and memory of the files above
    distributed.barrier()  # no rank returns (and, in a test, reads the folder) before rank 0 wrote it
    return FinetuneOutcome(options.out, method, plan.split, result, report)


def _memory_request(checked: CheckedInputs, model_type: str, world_size: int) -> MemoryPlanRequest:
    """What the memory planner is asked about this run."""
    options = checked.options
    return MemoryPlanRequest(method=options.method, profile=checked.profile, model_type=model_type,
                             num_classes=checked.mapping.num_classes, image_size=options.image_size,
                             batch_size=options.batch_size, world_size=world_size, device=checked.device,
                             precision=checked.precision, cache_allowed=options.cache_embeddings != "off",
                             gpu_memory=checked.gpu_memory, gpu_memory_text=options.gpu_memory)


def _read_cases(checked: CheckedInputs, reporter: FinetuneReporter) -> tuple[TrainingSlices, SliceDiceValidator | None]:
    """The training slices, and a validator on the validation cases (if any); each case reported."""
    options, split, mapping = checked.options, checked.split, checked.mapping
    settings = slice_settings(options, checked.dataset)
    total_cases = len(split.train) + len(split.val)
    loaded = [0]

    def case_loaded(case_id: str) -> None:
        loaded[0] += 1
        reporter.on_case_loaded(case_id, loaded[0], total_cases)

    stacks = load_case_stacks(checked.dataset, split.train, settings, mapping, options.seed, case_loaded)
    data = TrainingSlices(stacks, options.image_size)
    validator = None
    if split.val:
        val_stacks = load_case_stacks(checked.dataset, split.val, settings, mapping, options.seed, case_loaded)
        validator = SliceDiceValidator(val_stacks, options.image_size, mapping.num_classes, options.batch_size,
                                       checked.device)
    return data, validator


class SilentReporter(SilentObserver):
    """A :class:`FinetuneReporter` that shows nothing: what a rank other than 0 shows (rank 0
    speaks for the job), and a base for reporters that only watch."""

    def info(self, message: str) -> None:
        pass

    def on_case_loaded(self, case_id: str, done: int, total: int) -> None:
        pass



def _resolve_weights(options: FinetuneOptions, device: torch.device | None = None) -> FinetuneOptions:
    """The model type, base checkpoint and input size a run starts from (cheap checks only:
    :func:`medsaga.model.load.choose_weights`).

    Neither ``--model`` nor ``--checkpoint``: ``--model`` :data:`DEFAULT_MODEL` (LiteMedSAM).
    On a CPU ``device``, a model type with a :attr:`~medsaga.model.registry.ModelType.cpu_train_image_size`
    (LiteMedSAM: 128) trains at that size unless ``--image-size`` is given.
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
    image_size = options.image_size
    if image_size is None and device is not None and device.type == "cpu" and options.model is not None:
        image_size = get_model_type(options.model).cpu_train_image_size
    choice = choose_weights(options.model, options.checkpoint, random_init=options.random_init,
                            image_size=image_size)
    return replace(options, checkpoint=choice.checkpoint, image_size=choice.image_size)



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
