"""``medsaga finetune DATA_DIR --shots K ...``: few-shot fine-tuning with a progress bar and a report."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import typer

from cli.console import ProgressBars, stderr_console, stdout_console
from cli.options import DEFAULT_DEVICE, DEFAULT_PRECISION, BatchSize, Checkpoint, Command, Device, Force, ImageSize, \
    Intensity, Model, Plane, Precision, RandomInit, Seed, library_default
from medsaga.errors import InputError

SHORT_HELP = "Fine-tune SAM on a few labelled cases (few-shot)."


def register(app: typer.Typer) -> None:
    app.command("finetune", cls=_MethodsEpilogCommand, short_help=SHORT_HELP)(finetune)


class _MethodsEpilogCommand(Command):
    """Builds the methods epilog only when ``finetune --help`` shows it: listing the methods imports
    torch, which would otherwise slow down every ``medsaga`` call by seconds."""

    @property  # type: ignore[override]
    def epilog(self) -> str:
        return _methods_epilog()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass


def finetune(
    data_dir: Path | None = typer.Argument(None, help="Dataset folder (nnU-Net v2 / MSD layout or image/label "
                                                      "pairs). Not needed with --resume."),
    shots: int = typer.Option(5, "--shots", "-k", help="Number of labelled cases to train on, chosen from the seed."),
    cases: str | None = typer.Option(None, "--cases", help="Train on these case ids instead: comma-separated, or "
                                                           "a file (medsaga select's selection.json or cases.txt)."),
    val: int = typer.Option(0, "--val", help="Hold out this many other labelled cases; report their mean Dice "
                                             "per epoch."),
    method: str = typer.Option("galore", "--method", "-m", help="Tuning method (see the list below)."),
    method_option: list[str] = typer.Option([], "--method-option", "-o",
                                            help="A method option as KEY=VALUE, repeatable (e.g. -o rank=4)."),
    checkpoint: Checkpoint = None,
    model: Model = None,
    random_init: RandomInit = False,
    out: Path | None = typer.Option(None, "--out", help="Run folder to create (RUN_DIR; default: a new "
                                                        "runs/<dataset>-<method>-k<K>, then -2, -3...)."),
    image_size: ImageSize = None,
    epochs: int | None = typer.Option(None, "--epochs", help="Passes over the training slices (default 10)."),
    steps: int | None = typer.Option(None, "--steps", help="Optimizer steps (instead of --epochs)."),
    time_budget: str | None = typer.Option(None, "--time-budget", help="Train for this wall-clock time instead "
                                                                       "of --epochs/--steps (20m, 90s, 1h30m or "
                                                                       "seconds, counted from the start): the "
                                                                       "steps are fixed from the first steps' "
                                                                       "time, and the lr schedule ends with it."),
    time_budget_clock: str = typer.Option("wall", "--time-budget-clock",
                                          help="What --time-budget counts: wall (the time you wait) or cpu "
                                               "(this process's CPU seconds: a fair share on a busy machine, "
                                               "for benchmarks)."),
    decoder_warmup: float | None = typer.Option(
        None, "--decoder-warmup",
        help="Share of the steps (or of --time-budget) spent first training the mask decoder alone on the "
             "frozen encoder's cached embeddings, before the method trains the encoder too (0 to 1, not 1; "
             "0: none). Default: 0.5 for a method that trains the encoder, in a --time-budget run or one of "
             "at least 100 steps; none otherwise."),
    batch_size: BatchSize = library_default("medsaga.train.options", "FinetuneOptions.batch_size"),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Forward/backward passes per optimizer step."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default: the method's, below; "
                                                       "at most 1e-3 on litemedsam)."),
    decoder_lr: float | None = typer.Option(None, "--decoder-lr", help="The mask decoder's own peak learning rate "
                                                                       "(default: --lr's; 1e-3 on litemedsam)."),
    weight_decay: float | None = typer.Option(None, "--weight-decay", help="AdamW weight decay (default 0.1)."),
    warmup: float = typer.Option(0.05, "--warmup", help="Fraction of the steps spent in linear warm-up."),
    seed: Seed = 0,
    device: Device = DEFAULT_DEVICE,
    precision: Precision = DEFAULT_PRECISION,
    activation_checkpointing: bool | None = typer.Option(
        None, "--activation-checkpointing/--no-activation-checkpointing",
        help="Recompute encoder blocks in backward: less memory, more time (default: on where the encoder "
             "trains, off with --speed)."),
    speed: bool = typer.Option(False, "--speed", help="Trade memory for time: without the lean defaults "
                                                      "(layer-wise GaLore, activation checkpointing, the embedding "
                                                      "cache on short runs). For big GPUs; see 'medsaga plan'."),
    plane: Plane = library_default("medsaga.train.options", "FinetuneOptions.plane"),
    slice_mode: str | None = typer.Option(None, "--slice-mode", help="repeat, neighbours (2.5-D) or modalities "
                                                                     "(default: repeat for one channel)."),
    intensity: Intensity = None,
    empty_ratio: float = typer.Option(0.25, "--empty-ratio", help="Empty slices kept per slice with foreground."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Flips, small rotations and scales, "
                                                                      "intensity jitter."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every",
                                         help="Steps between resumable checkpoints (the first comes after step 1; "
                                              "0: only at the end)."),
    cache_embeddings: str = typer.Option("auto", "--cache-embeddings",
                                         help="auto, on or off. On: run the frozen part of the encoder once per "
                                              "training slice and fixed view (--cache-views), keep its outputs in "
                                              "RAM and train the rest on them, so a step costs decoder time, not "
                                              "encoder time; augmentation is then those fixed views instead of "
                                              "fresh draws each step. auto: on for the methods that have a frozen "
                                              "encoder part (decoder: the whole encoder; adapter: the ViT beside "
                                              "it) when the run trains on at least as many slices as the cache "
                                              "holds views (so it saves encoder passes), else off; on is an error "
                                              "for the other methods."),
    cache_views: int = typer.Option(4, "--cache-views", help="Fixed views per slice in the cache: view 0 is the "
                                                             "slice as it is, the others seeded augmentations "
                                                             "(1 with --no-augment). Build time and memory grow "
                                                             "with it."),
    cache_dtype: str = typer.Option("fp32", "--cache-dtype", help="Storage of the cache: fp32, or fp16/bf16 for "
                                                                  "half the memory (rounded embeddings)."),
    attention: str = typer.Option("fast", "--attention", help="The image encoder's attention: fast (default: no "
                                                              "work on the zero padding of SAM's 14x14 windows; "
                                                              "exact, ~1.4x faster at 256 px and less activation "
                                                              "memory) or sam (segment-anything's own)."),
    gpu_memory: str | None = typer.Option(None, "--gpu-memory", help="The GPU's memory (e.g. 12GiB): predict this "
                                                                     "run's peak first (as 'medsaga plan') and stop "
                                                                     "with one line if it does not fit. On CUDA the "
                                                                     "plan is printed anyway."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the run in this RUN_DIR from its last "
                                                              "checkpoint."),
    force: Force = False,
    nproc: int = typer.Option(1, "--nproc", help="Train with this many processes on this machine (one per GPU, "
                                                 "or CPU processes): launches torchrun. --batch-size is the "
                                                 "global batch, split between them. For several machines run "
                                                 "torchrun yourself (docs/scaling-out.md)."),
) -> None:
    """Few-shot fine-tuning of SAM for prompt-free multi-class segmentation.

    Chooses K labelled cases, trains on their slices with the chosen method, and writes RUN_DIR:
    config.json, trained.safetensors + method.json, metrics.jsonl, report.json and a resumable
    checkpoint/. Ends with a memory and throughput report.
    """
    from medsaga.train.finetune import FinetuneOptions, finetune as run_finetune, options_from_run

    if resume is not None:
        options, resuming = options_from_run(resume), True
    else:
        if data_dir is None:
            raise InputError("give DATA_DIR (or --resume RUN_DIR)")
        from medsaga.select.case_list import parse_cases

        case_ids, selection = parse_cases(cases)
        if out is None:  # a new folder under runs/, never an existing one (medsaga.runs)
            out, out_why = _default_out(data_dir, method, len(case_ids) or shots), "new, named from the dataset, " \
                "method and K; --out chooses another"
        else:
            out_why = "--out"
        options, resuming = FinetuneOptions(
            data_dir=data_dir, out=out, shots=shots, cases=case_ids, selection=selection, val=val, method=method,
            method_options=_parse_method_options(method_option),
            checkpoint=checkpoint, model=model, random_init=random_init, image_size=image_size, epochs=epochs,
            steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, decoder_lr=decoder_lr,
            weight_decay=weight_decay,
            warmup_fraction=warmup,
            seed=seed, device=device, precision=precision, activation_checkpointing=activation_checkpointing,
            speed=speed,
            plane=plane, slice_mode=slice_mode, intensity=intensity, empty_ratio=empty_ratio, augment=augment,
            checkpoint_every=checkpoint_every, cache_embeddings=cache_embeddings, cache_views=cache_views,
            cache_dtype=cache_dtype, attention=attention, gpu_memory=gpu_memory, time_budget=time_budget,
            time_budget_clock=time_budget_clock, decoder_warmup=decoder_warmup,
            force=force), False
    if nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {nproc}")
    if nproc > 1:
        from cli.launch import launch_torchrun, without_option
        from medsaga import distributed
        from medsaga.train.finetune import check_inputs

        if distributed.launched_by_torchrun():
            raise InputError("--nproc launches torchrun itself: under torchrun, leave it out")
        check_inputs(options, resume=resuming, world_size=nproc)  # bad input: one line here, not one per process
        arguments = without_option(sys.argv[1:], "--nproc")
        if not resuming and out_why != "--out":  # every rank must write the one folder named here
            arguments += ["--out", str(options.out)]
        raise typer.Exit(launch_torchrun(nproc, arguments))
    # What the defaults chose, shown first, but only once the checks passed (before the library's
    # first line): bad input stays one line.
    preamble = []
    if not resuming:
        preamble.append(f"run folder {options.out} ({out_why})")
        if model is None and checkpoint is None:
            from medsaga.train import finetune as finetune_module

            preamble.append(f"model {finetune_module.DEFAULT_MODEL}: the default, the pretrained medical SAM "
                            "installed with medsaga (--model or --checkpoint chooses another)")
    from medsaga.plan.own_run import plan_own_run  # the memory plan: injected, medsaga.train does not import plan

    reporter = _Reporter(preamble)
    try:
        outcome = run_finetune(options, reporter, resume=resuming, memory_planner=plan_own_run)
    finally:
        reporter.close()
    from medsaga import distributed

    if distributed.current().is_main:
        _print_report(outcome.report, outcome.run_dir)
        _record_latest(outcome.run_dir)


def _default_out(data_dir: Path, method: str, shots: int) -> Path:
    """``runs/<dataset>-<method>-k<K>`` (``-2``, ``-3``... when taken); the dataset's name from its
    dataset.json or folder (a bad DATA_DIR is the same one-line error finetune would give)."""
    from medsaga.data.dataset import discover_dataset
    from medsaga.runs import default_run_dir

    return default_run_dir(discover_dataset(data_dir).name, method, shots)


def _record_latest(run_dir: Path) -> None:
    """Point runs/latest at the finished run (only a run under ./runs/, see medsaga.runs.record_latest)
    and say, last, where the run is and how to predict with it."""
    from medsaga.runs import record_latest

    link = record_latest(run_dir)
    if link is not None:
        print(f"run folder {run_dir} ({link} points to it: 'medsaga predict SCAN' predicts with it)")
    else:
        print(f"run folder {run_dir} (outside ./runs/, so runs/latest is unchanged: "
              f"'medsaga predict --run {run_dir} SCAN' predicts with it)")


def _parse_method_options(pairs: list[str]) -> dict[str, Any]:
    """``["rank=4", "svd=full"]`` → ``{"rank": 4, "svd": "full"}`` (numbers and booleans parsed)."""
    from medsaga.methods.option_text import parse_option_value

    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise InputError(f"--method-option takes KEY=VALUE, got {pair!r}")
        parsed[key.strip().replace("-", "_")] = parse_option_value(text.strip(), ",")
    return parsed


def _methods_epilog() -> str:
    """The methods and their options, generated from the registry (always in step with the code)."""
    from medsaga.methods.registry import method_classes

    lines = ["Methods (--method) and their options (-o KEY=VALUE):"]
    for method_type in method_classes():
        fields = dataclasses.fields(method_type.options_type)
        options = ", ".join(f"{f.name}={_default_text(f)}" for f in fields) or "no options"
        frozen = "; encoder frozen" if method_type.encoder_frozen else ""
        if method_type.encoder_cacheable:
            frozen += "; frozen encoder part cacheable (--cache-embeddings)"
        lines.append(f"  {method_type.name}: lr {method_type.default_lr:g}{frozen}; {options}. "
                     f"{_first_line(method_type.__doc__)}")
    return "\n\n".join(lines)


def _default_text(field: dataclasses.Field) -> str:
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n")[0]


class _Reporter:
    """Rich progress on stderr: loading cases, building the cache, then training (step, loss, lr,
    slices/s). Reading and caching bars are transient: a bad case leaves its one error line only."""

    def __init__(self, preamble: list[str] | None = None) -> None:
        self.console = stderr_console()
        self.reading = ProgressBars(self.console)
        self.caching = ProgressBars(self.console)
        self.training = ProgressBars(self.console, transient=False, remaining=True,
                                     detail="loss {task.fields[loss]}  lr {task.fields[lr]}  "
                                            "{task.fields[speed]} slices/s")
        self.preamble = list(preamble or [])  # printed before the first message (the checks have passed)

    def info(self, message: str) -> None:
        self._flush_preamble()
        self.console.print(message, markup=False)

    def _flush_preamble(self) -> None:
        for line in self.preamble:
            self.console.print(line, markup=False)
        self.preamble = []

    def on_case_loaded(self, case_id: str, done: int, total: int) -> None:
        self.reading.update("cases", done, total, f"reading and checking cases {case_id}")
        if done == total:
            self.reading.close()

    def on_cache_progress(self, done: int, total: int) -> None:
        # The info line before it says what is being built.
        self.caching.update("cache", done, total, "building the embedding cache")
        if done == total:
            self.caching.close()

    def close(self) -> None:
        """Stop whatever display is still live (after an error, say)."""
        for bars in (self.reading, self.caching, self.training):
            bars.close()

    def on_start(self, total_steps: int, first_step: int, steps_per_epoch: float) -> None:
        self._flush_preamble()
        self.steps_per_epoch = steps_per_epoch
        self.training.update("train", first_step, total_steps, "epoch 1", loss="-", lr="-", speed="-")

    def on_total_steps(self, total_steps: int) -> None:
        """A --time-budget run's total, once its first steps are timed."""
        if self.training.total("train") is not None:
            self.training.update("train", None, total_steps)

    def on_step(self, step: int, loss: float, lr: float, slices_per_second: float) -> None:
        epoch = int((step - 1) // self.steps_per_epoch) + 1
        total = self.training.total("train") or step
        self.training.update("train", step, None, f"epoch {epoch}", loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                             speed=f"{slices_per_second:.1f}")
        if not self.training.shown and (step == total or step % max(1, round(total / 10)) == 0):
            # A log file gets a line every tenth of the run instead of a live bar.
            self.console.print(f"step {step}/{total:.0f} epoch {epoch} loss {loss:.4f} lr {lr:.2e} "
                               f"{slices_per_second:.1f} slices/s", markup=False)
        if step == total:
            self.training.close()

    def on_validation(self, epoch: int, mean_dice: float) -> None:
        self.console.print(f"  validation after epoch {epoch}: mean Dice {mean_dice:.4f}", markup=False)


def _print_report(report: dict[str, Any], run_dir: Path) -> None:
    from rich.table import Table

    memory = report["memory"]
    peak = report["peak_memory"]
    table = Table(title=f"medsaga finetune: {report['method']} on {report['device']} ({report['precision']})",
                  show_header=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")
    rows = [
        ("method", report["method"]),
        ("model", f"{report['model_type']} at {report['image_size']} px"),
        ("memory settings", _profile_text(report.get("memory_profile"))),
        ("shots", ", ".join(report["train_cases"])),
        ("parameters", f"{report['trainable_parameters']:,} trainable; SAM has {report['total_parameters']:,} "
                       f"({100 * report['trainable_parameters'] / max(report['total_parameters'], 1):.2f} %)"),
        (f"peak memory ({peak['kind']})", _mib(peak["peak_above_baseline_bytes"]) + " above the loaded model"),
        ("tensor peak", _tensor_peak_text(report.get("tensor_peak"))),
        ("  frozen parameters + buffers", _mib(memory["frozen_parameters"])),
        ("  trainable parameters", _mib(memory["trainable_parameters"])),
        ("  gradients (peak alive)", _mib(memory["gradients"])),
        ("  optimizer state", _mib(memory["optimizer_state"])),
        ("  saved activations (peak)", _mib(memory["saved_activations"])),
        ("  sum of the peaks (upper bound)", _mib(memory["sum_of_peaks"])),
        ("throughput", f"{report['slices_per_second']:.2f} slices/s ({report['slices_seen']} slices)"),
        ("wall time", f"{report['wall_seconds']:.1f} s for steps {report['first_step'] + 1}..{report['steps']}"),
        ("final loss", f"{report['final_loss']:.4f}"),
    ]
    cache = report.get("embedding_cache")
    if cache:
        # Runs from before issue 29 encoded every slice-view and say nothing of it.
        encoded = cache.get("summary") or f"{cache['slices']} slices x {cache['views']} views"
        rows.append(("embedding cache", f"{encoded}; {cache['frozen_module']} outputs: {_mib(cache['bytes'])} "
                                        f"({cache['dtype']}), built in {cache['build_seconds']:.1f} s; "
                                        f"{cache['slices_per_second_including_build']:.2f} slices/s with the build"))
    if report["validation_dice"]:
        dice = [f"{d:.3f}" for d in report["validation_dice"]]
        shown = dice if len(dice) <= 6 else [dice[0], "…", *dice[-4:]]
        rows.append(("validation mean Dice", " → ".join(shown) + f" ({len(dice)} evaluations)"))
    job = report.get("distributed")
    if job:  # torchrun: the throughput above is the job's; each rank's own peak here
        peaks = ", ".join(f"rank {r['rank']} {r['peak_memory']['peak_above_baseline_bytes'] / 2**20:.1f} MiB"
                          for r in job["ranks"])
        rows.append(("processes", f"{job['world_size']} ({job['backend']}); peak memory {peaks}"))
    rows.append(("run folder", str(run_dir)))
    if (run_dir / "report.html").is_file():
        rows.append(("report page", str(run_dir / "report.html")))
    for what, value in rows:
        table.add_row(what, value)
    stdout_console().print(table)


def _profile_text(profile: dict[str, Any] | None) -> str:
    """``lean: layerwise, activation_checkpointing`` (runs from before the profiles: as recorded)."""
    if not profile:
        return "as recorded (a run from before the lean defaults)"
    if profile["profile"] == "speed":
        return "speed (--speed: none of the lean settings)"
    return "lean: " + (", ".join(profile["applied"]) or "nothing to save for this method") + \
        ("" if not profile["notes"] else f" ({len(profile['notes'])} gave way to your options)")


def _tensor_peak_text(peak: dict[str, Any] | None) -> str:
    """The most tensor bytes alive at once above the model (what a GPU's allocator counts)."""
    if not peak or not peak.get("measured"):
        return "not measured"
    if peak["kind"] != "profiler allocations":
        return _mib(peak["bytes"]) + f" ({peak['kind']})"
    return (f"{_mib(peak['bytes'])} at step {peak['step']}: {_mib(peak['held_bytes'])} held between steps + "
            f"{_mib(peak['in_step_bytes'])} inside it (what a GPU's allocator would count)")


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"
