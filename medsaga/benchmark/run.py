"""``medsaga benchmark`` as a library call: every entry measured in its own process, then compared.

Order, as in finetune: everything that can fail on bad input (sizes, device, the ``--methods``
text and every method's options, the output folder, the dataset and its labels) is checked before
the first worker starts. Then the parent reads a couple of cases once (:mod:`.slices`), runs one
worker per entry (:mod:`.worker`, started through :mod:`.launch`), adds the ratios to the
reference (plain ``full``), and writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png``
atomically into the output folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from medsaga import __version__
from medsaga.benchmark.report import add_ratios, markdown_table
from medsaga.benchmark.variants import Variant, parse_variants, with_reference
from medsaga.benchmark.worker import WARMUP_STEPS, WorkerSpec
from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output

JSON_FILE = "benchmark.json"
MARKDOWN_FILE = "benchmark.md"
CHART_FILE = "benchmark.png"
OUTPUT_FILES = (JSON_FILE, MARKDOWN_FILE, CHART_FILE)
BENCHMARK_CASES = 2  # a couple of real cases: enough for real inputs, cheap to read
MAX_SLICES = 64
WEIGHTS_NOTE = "random weights: memory and speed do not depend on the weights' values"


@dataclass(frozen=True)
class BenchmarkOptions:
    """Everything ``medsaga benchmark`` takes (see ``medsaga benchmark --help``)."""

    data_dir: Path
    out: Path
    model: str = "vit_b"
    image_size: int = 256
    batch_size: int = 2
    methods: str = "all"
    steps: int = 5
    device: str = "auto"
    bf16: bool = False
    activation_checkpointing: bool = False
    seed: int = 0
    threads: int | None = None
    force: bool = False


class BenchmarkReporter(Protocol):
    """What the command shows while the workers run."""

    def info(self, message: str) -> None: ...

    def on_entry_start(self, index: int, total: int, label: str) -> None: ...

    def on_entry_done(self, index: int, total: int, record: dict[str, Any]) -> None: ...


# Runs one worker command, returns (exit status, stdout, stderr); tests replace it.
CommandRunner = Callable[[list[str]], tuple[int, str, str]]


@dataclass(frozen=True)
class EntryConfig:
    """What one entry trains with: finetune's memory profile resolved for the variant.

    Attributes:
        profile: ``lean`` (finetune's default) or ``speed`` (``@speed``, finetune ``--speed``).
        options: the method's options, the profile's lean ones added (the entry's own kept).
        checkpointing: activation checkpointing of the encoder blocks.
        cache: train on the embedding cache.
        applied: the lean settings in force, as finetune's report lists them.
        notes: lean settings that gave way to an option of the entry's.
    """

    profile: str
    options: dict[str, Any]
    checkpointing: bool
    cache: bool
    applied: tuple[str, ...]
    notes: tuple[str, ...]


def entry_config(variant: Variant) -> EntryConfig:
    """The configuration ``variant`` runs: what ``finetune --method M`` (``--speed`` for ``@speed``)
    trains with, through the same :func:`~medsaga.train.memory_profile.resolve_memory_profile`;
    the cache as ``medsaga plan`` counts it (on wherever the method can use it, ``@nocache`` off).

    Raises:
        InputError: conflicting options of the entry's own; ``@cache`` on a method with nothing to cache.
    """
    from medsaga.methods.registry import method_class, method_classes
    from medsaga.train.memory_profile import resolve_memory_profile

    method_type = method_class(variant.method)
    resolved = resolve_memory_profile(variant.method, variant.options_dict(), speed=variant.speed,
                                      activation_checkpointing=True if variant.checkpointing else None, grad_accum=1)
    if variant.cache and not method_type.encoder_cacheable:
        cacheable = [other.name for other in method_classes() if other.encoder_cacheable]
        raise InputError(f"--methods: {variant.label}: method {variant.method!r} trains its image encoder, so there "
                         f"is no frozen encoder output to cache (@cache fits {', '.join(cacheable)})")
    cache = method_type.encoder_cacheable and not variant.nocache
    return EntryConfig(resolved.name, resolved.method_options, resolved.activation_checkpointing, cache,
                       resolved.applied, resolved.notes)


@dataclass(frozen=True)
class _Plan:
    """What the checks decided: the entries in order, their configurations, the reference, and notes."""

    variants: list[Variant]
    reference: Variant
    device: Any  # torch.device
    notes: list[str]
    configs: list[EntryConfig]


def run_benchmark(options: BenchmarkOptions, reporter: BenchmarkReporter, *,
                  run_command: CommandRunner | None = None) -> dict[str, Any]:
    """Measure every entry of ``options.methods``; write and return the benchmark document."""
    started = time.perf_counter()
    plan = _plan(options)
    _check_out(options.out, options.force)
    stacks, dataset, mapping = _read_slices(options)
    for note in plan.notes:
        reporter.info(note)
    reporter.info(f"{options.model} at {options.image_size} px, batch {options.batch_size}, {plan.device.type}: "
                  f"{len(plan.variants)} entries, each in its own process ({WARMUP_STEPS} warm-up + "
                  f"{options.steps} timed steps); {WEIGHTS_NOTE}")
    reporter.info(f"slices: {sum(s.images.shape[0] for s in stacks)} from cases "
                  f"{', '.join(s.case_id for s in stacks)} of {dataset.root}")
    entries = _measure(options, plan, stacks, mapping.num_classes, reporter, run_command or _run_command)
    add_ratios(entries, plan.reference.label)
    document = {
        "medsaga_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "weights": WEIGHTS_NOTE,
        "settings": {"model": options.model, "image_size": options.image_size, "batch_size": options.batch_size,
                     "warmup_steps": WARMUP_STEPS, "timed_steps": options.steps, "device": plan.device.type,
                     "methods": options.methods, "bf16": options.bf16,
                     "activation_checkpointing": options.activation_checkpointing, "seed": options.seed,
                     "threads": options.threads},
        "data": {"root": str(dataset.root.resolve()), "name": dataset.name,
                 "cases": [stack.case_id for stack in stacks], "slices": sum(s.images.shape[0] for s in stacks),
                 "num_classes": mapping.num_classes},
        "reference": plan.reference.label,
        "peak_memory_kind": _peak_kind(plan.device.type),
        "wall_seconds": time.perf_counter() - started,
        "entries": entries,
    }
    _write_outputs(options.out, document)
    return document


def _plan(options: BenchmarkOptions) -> _Plan:
    """Every check that needs no data: sizes, counts, device, the --methods text and each method's options."""
    from medsaga.methods import create_method, method_names
    from medsaga.model.build import check_image_size, check_model_type
    from medsaga.train.finetune import resolve_device

    check_image_size(options.image_size, "--image-size")
    check_model_type(options.model)
    for name, value in (("--batch-size", options.batch_size), ("--steps", options.steps),
                        ("--threads", options.threads)):
        if value is not None and value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    device = resolve_device(options.device)
    listed = parse_variants(options.methods, method_names(), bf16=options.bf16,
                            checkpointing=options.activation_checkpointing)
    variants, reference, added = with_reference(listed, bf16=options.bf16,
                                                checkpointing=options.activation_checkpointing)
    # Each entry resolves finetune's memory profile, and its method checks the options it ends up
    # with here (a bad one fails now, not in a worker).
    configs = [entry_config(variant) for variant in variants]
    methods = [create_method(variant.method, config.options) for variant, config in zip(variants, configs)]
    notes = [f"added {reference.label} as the reference the ratios are computed against"] if added else []
    notes.append("each entry runs as finetune runs its method by default (lean: "
                 + "; ".join(f"{variant.label} {', '.join(config.applied) or 'nothing to add'}"
                             for variant, config in zip(variants, configs) if not variant.speed)
                 + "); @speed entries as finetune --speed")
    notes += [f"{variant.label}: {note}" for variant, config in zip(variants, configs) for note in config.notes]
    idle = [variant.label for variant, method in zip(variants, methods)
            if variant.checkpointing and method.encoder_frozen]
    if idle:
        notes.append(f"activation checkpointing has no effect on {', '.join(idle)}: the encoder runs without "
                     "gradients there, so it stores no activations to recompute")
    cached = [variant.label for variant, config in zip(variants, configs) if config.cache]
    if cached:
        from medsaga.train.embedding_cache import DEFAULT_VIEWS

        notes.append(f"{', '.join(cached)}: the timed steps train on a cache of {DEFAULT_VIEWS} fixed views per "
                     "slice (@nocache: without); the cache's build (its frozen-encoder passes) is timed apart, as "
                     "embedding_cache.build_seconds in the JSON")
    return _Plan(variants, reference, device, notes, configs)


def _measure(options: BenchmarkOptions, plan: _Plan, stacks: list[Any], num_classes: int,
             reporter: BenchmarkReporter, run_command: CommandRunner) -> list[dict[str, Any]]:
    """One worker per entry, in order, on the same slices; their records."""
    from medsaga.benchmark.slices import save_slices
    from medsaga.train.embedding_cache import DEFAULT_VIEWS

    entries = []
    with tempfile.TemporaryDirectory(prefix="medsaga-benchmark-") as scratch:
        slices_path = Path(scratch) / "slices.safetensors"
        save_slices(stacks, slices_path)
        for index, (variant, config) in enumerate(zip(plan.variants, plan.configs)):
            spec = WorkerSpec(label=variant.label, method=variant.method, options=config.options,
                              precision=variant.precision, activation_checkpointing=config.checkpointing,
                              model=options.model, image_size=options.image_size, num_classes=num_classes,
                              batch_size=options.batch_size, steps=options.steps, device=plan.device.type,
                              seed=options.seed, slices=str(slices_path), threads=options.threads,
                              cache_views=DEFAULT_VIEWS if config.cache else 0,
                              fast_attention=not variant.padded, memory_profile=config.profile,
                              lean_settings=list(config.applied))
            reporter.on_entry_start(index, len(plan.variants), variant.label)
            record = _run_worker(spec, Path(scratch) / f"spec-{index}.json", run_command)
            entries.append(record)
            reporter.on_entry_done(index, len(plan.variants), record)
    return entries


def _check_out(out: Path, force: bool) -> None:
    """The output folder may be new or hold anything, but earlier outputs are replaced only with --force."""
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    for name in OUTPUT_FILES:
        if (out / name).exists() and not force:
            raise InputError(f"already holds {name}; pass --force to replace the benchmark there", out)


def _read_slices(options: BenchmarkOptions):
    """A couple of labelled cases through finetune's data path, thinned to the slices needed."""
    from medsaga.benchmark.slices import thin_stacks
    from medsaga.data.dataset import discover_dataset
    from medsaga.train.data import SliceSettings, default_presets, label_mapping, load_case_stacks
    from medsaga.train.shots import choose_cases

    dataset = discover_dataset(options.data_dir)
    mapping = label_mapping(dataset)
    cases = min(BENCHMARK_CASES, max(len(dataset.labelled_cases), 1))
    split = choose_cases(dataset, cases, options.seed)
    settings = SliceSettings(plane="axial", mode="repeat" if len(dataset.channel_names) == 1 else "modalities",
                             presets=default_presets(dataset), image_size=options.image_size)
    stacks = load_case_stacks(dataset, split.train, settings, mapping, options.seed)
    stacks = [stack for stack in stacks if stack.images.shape[0]]
    if not stacks:
        raise InputError("the chosen cases hold no labelled slices to benchmark on", dataset.root)
    needed = min(MAX_SLICES, options.batch_size * (WARMUP_STEPS + options.steps))
    return thin_stacks(stacks, needed), dataset, mapping


def _run_worker(spec: WorkerSpec, spec_path: Path, run_command: CommandRunner) -> dict[str, Any]:
    """Run one worker; its record, or a ``failed`` record carrying the worker's last error line."""
    spec_path.write_text(json.dumps(spec.to_json()), encoding="utf-8")
    command = [sys.executable, "-m", "medsaga.benchmark.launch",
               sys.executable, "-m", "medsaga.benchmark.worker", str(spec_path)]
    status, stdout, stderr = run_command(command)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if status == 0 and lines:
        return json.loads(lines[-1])
    if status > 128 or status < 0:  # the launcher reports a signal N as 128 + N
        number = status - 128 if status > 128 else -status
        reason = f"killed by signal {number}" + (" (out of memory?)" if number == 9 else "")
    else:
        reason = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()),
                      f"exit status {status}, no output")
    return {"label": spec.label, "method": spec.method, "options": spec.options, "precision": spec.precision,
            "activation_checkpointing": spec.activation_checkpointing, "status": "failed", "error": reason}


def _run_command(command: list[str]) -> tuple[int, str, str]:
    # The package root goes on PYTHONPATH so a worker imports this very medsaga, installed or not.
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    return completed.returncode, completed.stdout, completed.stderr


def _peak_kind(device_type: str) -> str:
    return ("CUDA max_memory_allocated above the loaded model" if device_type == "cuda"
            else "peak RSS above the loaded model")


def _write_outputs(out: Path, document: dict[str, Any]) -> None:
    from medsaga.benchmark.chart import render_chart

    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / JSON_FILE) as temporary:
        temporary.write_text(json.dumps(_finite(document), indent=2) + "\n", encoding="utf-8")
    with atomic_output(out / MARKDOWN_FILE) as temporary:
        temporary.write_text(markdown_table(document), encoding="utf-8")
    with atomic_output(out / CHART_FILE) as temporary:
        temporary.write_bytes(render_chart(document))


def _finite(value: Any) -> Any:
    """NaN/inf (a diverged loss) as null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


__all__ = ["BenchmarkOptions", "BenchmarkReporter", "OUTPUT_FILES", "Variant", "run_benchmark"]
