"""What ``medsaga finetune`` takes: its options, their range checks, and the options a run
recorded (``--resume``). Declarations and cheap checks only: nothing here reads a case or builds
a model (:mod:`medsaga.train.finetune` does the rest of the checking and runs the run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medsaga.errors import InputError
from medsaga.model.build import check_image_size
from medsaga.option_checks import check_fraction, check_int, check_non_negative, check_positive
from medsaga.train.embedding_cache import DEFAULT_VIEWS

CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"
DEFAULT_EPOCHS = 10
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
    # The decoder's warm-up on cached embeddings before the encoder trains: its share of the steps
    # (or of the budget); None: auto (medsaga.train.decoder_warmup)
    decoder_warmup: float | None = None
    force: bool = False


def check_numbers(options: FinetuneOptions) -> None:
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
        # ... and without a decoder warm-up.
        recorded.setdefault("decoder_warmup", 0.0)
        options = FinetuneOptions(**{**recorded, "data_dir": Path(recorded["data_dir"]), "out": run_dir,
                                     "checkpoint": Path(recorded["checkpoint"]) if recorded["checkpoint"] else None,
                                     "cases": tuple(recorded["cases"])})
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read the run's options ({error})", path) from None
    return replace(options, **overrides)
