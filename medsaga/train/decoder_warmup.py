"""A decoder warm-up before the image encoder trains (``medsaga finetune --decoder-warmup``).

Why: a method that trains the image encoder (GaLore, the default; LoRA, Conv-LoRA, SAM-PARSER,
full) pays the encoder's forward and backward pass on every step. On a CPU that is ~30 s a step
for LiteMedSAM at 256 px: in 10 CPU-minutes such a run made 15–18 steps and ended predicting
background everywhere, on all four tasks of ``benchmarks/quality_vs_baselines.py`` (mean Dice
0.00; issue 27). The mask decoder alone, on the frozen encoder's cached embeddings, makes a step
in well under a second, so the same budget buys hundreds of steps and leaves the all-background
plateau. The warm-up trains the decoder that way first; the run's own method then starts from a
decoder that already segments, and spends its (expensive) steps adapting the encoder.

The two phases:

1. the ``decoder`` method exactly as ``--method decoder`` runs it (frozen encoder, embedding
   cache, the same loop), in ``RUN/decoder-warmup/``: its own ``metrics.jsonl``, checkpoints and,
   once done, its ``trained.safetensors`` (what ``--resume`` reads to know it is done);
2. the run's method, from the warmed-up decoder, in ``RUN/`` as any run.

How much: ``fraction`` of the steps (a ``--steps``/``--epochs`` run: the warm-up's steps are part
of the total), or of the seconds (a ``--time-budget`` run: the warm-up ends at that share of the
budget, counted from the start; the encoder phase gets what is left). ``auto``
(:data:`DEFAULT_FRACTION`) warms up a method that cannot train from the cache (its encoder
trains) when the run is long enough for both phases to matter: a budgeted run, or one of at
least :data:`MIN_AUTO_STEPS` steps. A shorter run (a test, a smoke run) has none.

What the user sees afterwards does not change: ``trained.safetensors`` of the run holds the run's
method's tensors (the decoder among them: every method here trains it), ``predict`` reads it as
before; config.json and report.json say what the warm-up did (``decoder_warmup``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from medsaga.errors import InputError
from medsaga.methods import TuningMethod, create_method
from medsaga.methods.persist import TRAINED_FILE, save_trained
from medsaga.train.resume import checkpoint_folder

WARMUP_FOLDER = "decoder-warmup"
WARMUP_METHOD = "decoder"
DEFAULT_FRACTION = 0.5
"""``auto``'s share of the steps (or of the budget's seconds) that the decoder warm-up takes."""
AFTER_WARMUP_RATE = 0.1
"""The method's default learning rates (encoder and decoder) are multiplied by this after a warm-up:
at its own default (LiteMedSAM's cap, 1e-3) GaLore undid the warmed-up decoder within 45 steps on
CHAOS (loss 0.16 → 0.70, mean Dice 0.00); at a tenth it improved on it (0.49, against 0.46 for the
decoder alone for the whole budget). ``--lr``/``--decoder-lr`` given are used as given."""
MIN_AUTO_STEPS = 100
"""``auto`` warms up a ``--steps`` run only from this many steps: a shorter run has too few for
either phase to gain from the split (and it is what the tests and smoke runs use)."""


def needs_warmup(method: TuningMethod) -> bool:
    """Whether a decoder warm-up can help ``method``: it trains the image encoder, so each of its
    steps runs the whole encoder (a method with a cacheable frozen encoder already trains fast)."""
    return not method.encoder_cacheable


def check_warmup_option(value: float | None, method: TuningMethod) -> None:
    """``--decoder-warmup``: ``None`` (auto) or a fraction in [0, 1), and only for a method whose
    encoder trains.

    Raises:
        InputError: one line naming the option and what is wrong.
    """
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value < 1.0:
        raise InputError(f"--decoder-warmup must be a fraction from 0 up to (not including) 1, got {value!r}")
    if value > 0 and not needs_warmup(method):
        raise InputError(f"--decoder-warmup: method {method.name!r} trains from the embedding cache already "
                         "(it has no encoder phase to warm up for); leave the option out")


def resolve_fraction(requested: float | None, method: TuningMethod, *, steps: int, budgeted: bool) -> float:
    """The warm-up's share: ``requested`` when given, else ``auto`` (module docstring)."""
    if requested is not None:
        return float(requested)
    if needs_warmup(method) and (budgeted or steps >= MIN_AUTO_STEPS):
        return DEFAULT_FRACTION
    return 0.0


def split_steps(total: int, fraction: float) -> tuple[int, int]:
    """``(warm-up steps, the method's steps)`` of a ``total``-step run: the warm-up takes
    ``round(fraction × total)``, at least 1 and at most ``total - 1`` (each phase gets a step)."""
    if fraction <= 0 or total < 2:
        return 0, total
    warmup = min(max(int(round(fraction * total)), 1), total - 1)
    return warmup, total - warmup


@dataclass(frozen=True)
class WarmupPhase:
    """The decoder warm-up a run was decided to have.

    Attributes:
        fraction: its share of the steps or of the budget.
        method: the ``decoder`` method it trains with.
        plan: its run plan (:class:`~medsaga.train.run_plan.RunPlan`: loop, cache, rates).
        budget_seconds: a ``--time-budget`` run: the seconds (counted from the run's start) it
            ends at; ``None``: it runs ``plan.loop.steps`` steps.
    """

    fraction: float
    method: TuningMethod
    plan: Any
    budget_seconds: float | None

    def folder(self, run_dir: Path) -> Path:
        return run_dir / WARMUP_FOLDER

    def config(self) -> dict[str, Any]:
        """config.json's ``decoder_warmup``."""
        from dataclasses import asdict

        return {"fraction": self.fraction, "method": self.method.name, "folder": WARMUP_FOLDER,
                "training": asdict(self.plan.loop), "embedding_cache": self.plan.cache.to_json(),
                "budget_seconds": self.budget_seconds}


def warmup_method() -> TuningMethod:
    return create_method(WARMUP_METHOD)


def is_done(run_dir: Path) -> bool:
    """The warm-up of the run in ``run_dir`` finished (it wrote its trained decoder)."""
    return (run_dir / WARMUP_FOLDER / TRAINED_FILE).is_file()


def has_checkpoint(run_dir: Path) -> bool:
    """The warm-up of the run in ``run_dir`` wrote a resumable checkpoint."""
    folder = run_dir / WARMUP_FOLDER
    return folder.is_dir() and checkpoint_folder(folder) is not None


class TrainableFlags:
    """The ``requires_grad`` of every parameter of a model, kept to be put back: the warm-up freezes
    what the run's method trains (and the method's own :meth:`prepare` may not be idempotent: LoRA
    would wrap its layers twice)."""

    def __init__(self, model: nn.Module) -> None:
        self._flags = {name: parameter.requires_grad for name, parameter in model.named_parameters()}

    def restore(self, model: nn.Module) -> None:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(self._flags[name])


def save_warmup(method: TuningMethod, model: nn.Module, run_dir: Path) -> None:
    """Write the warmed-up decoder: the mark that the phase is done."""
    save_trained(method, model, run_dir / WARMUP_FOLDER)


def load_warmup(method: TuningMethod, model: nn.Module, run_dir: Path) -> None:
    """Put a finished warm-up's decoder back into ``model`` (prepared for the warm-up)."""
    from safetensors.torch import load_file

    path = run_dir / WARMUP_FOLDER / TRAINED_FILE
    try:
        state = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise InputError(f"not a readable trained decoder ({error})", path) from None
    device = next(model.parameters()).device
    method.load_trained_state(model, {name: value.to(device) for name, value in state.items()})


def warmup_options(options: Any, warmup_steps: int) -> Any:
    """The warm-up's :class:`~medsaga.train.options.FinetuneOptions`: the run's, with the decoder
    method and its own default learning rates (``--lr`` and ``--decoder-lr`` are the method phase's:
    the decoder alone trains well at rates that would wreck an encoder), and its steps."""
    return replace(options, method=WARMUP_METHOD, method_options={}, lr=None, decoder_lr=None, steps=warmup_steps,
                   epochs=None, time_budget=None)


def plan_with_warmup(checked: Any, facts: Any, warmup_frozen_module: str | None) -> Any:
    """The run's :class:`~medsaga.train.run_plan.RunPlan` with its decoder warm-up decided
    (``plan.warmup``: a :class:`WarmupPhase` or ``None``); pure, as
    :func:`~medsaga.train.run_plan.plan_run`.

    ``warmup_frozen_module``: the name of the frozen part the ``decoder`` method caches (the image
    encoder) in the model. The chosen fraction is written into the plan's options, so that
    config.json records it and ``--resume`` continues with the same phases.
    """
    from medsaga.train.run_plan import plan_run
    from medsaga.train.time_budget import parse_duration

    main = plan_run(checked, facts)
    options = main.options
    budgeted = options.time_budget is not None
    fraction = resolve_fraction(options.decoder_warmup, checked.method, steps=main.loop.steps, budgeted=budgeted)
    warmup_steps, main_steps = (0, main.loop.steps) if budgeted else split_steps(main.loop.steps, fraction)
    if fraction <= 0 or (not budgeted and warmup_steps == 0):
        return replace(main, options=replace(options, decoder_warmup=0.0), warmup=None)
    method = warmup_method()
    # A budgeted warm-up is itself budgeted (its steps fixed by its share of the seconds); a resumed
    # budgeted run has finished it (the main phase fixed its steps after it), so its plan is a record.
    warm_options = warmup_options(options, warmup_steps or 1)
    if budgeted:
        warm_options = replace(warm_options, steps=None, time_budget=options.time_budget)
    warm = plan_run(replace(checked, method=method, options=warm_options),
                    replace(facts, frozen_module=warmup_frozen_module, budget_record=None))
    seconds = fraction * parse_duration(options.time_budget) if budgeted else None
    phase = WarmupPhase(fraction=fraction, method=method, plan=warm, budget_seconds=seconds)
    options = replace(options, decoder_warmup=fraction)
    loop = main.loop
    if options.lr is None:  # the rates the user gave are theirs; the defaults step down (AFTER_WARMUP_RATE)
        loop = replace(loop, lr=loop.lr * AFTER_WARMUP_RATE)
    if options.decoder_lr is None and loop.decoder_lr is not None:  # (None: the decoder follows lr)
        loop = replace(loop, decoder_lr=loop.decoder_lr * AFTER_WARMUP_RATE)
    if not budgeted:
        loop = replace(loop, steps=main_steps, warmup_steps=int(round(options.warmup_fraction * main_steps)))
    return replace(main, options=options, loop=loop, warmup=phase)
