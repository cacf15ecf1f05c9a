"""Lean by default: the training configuration that needs least memory for the method, unless
the user asks for speed (``--speed``) or for something else explicitly.

The *lean* profile, per method (the method says which of its options save memory:
:attr:`~medsaga.methods.base.TuningMethod.lean_options`, e.g. GaLore's ``layerwise``):

- the method's memory-saving options (layer-wise GaLore frees each gradient inside backward);
- activation checkpointing of the encoder blocks where the encoder trains (it does nothing where
  the encoder runs without gradients);
- the embedding cache where a frozen part of the encoder can be cached and the cache fits in RAM
  (:func:`medsaga.train.embedding_cache.use_cache`, ``lean=True``).

The *speed* profile keeps what is fastest: no checkpointing, the method's plain defaults, the cache
only where it saves time. Whatever the profile, an option the user gave is never changed: where a
lean setting cannot combine with one the user asked for (layer-wise GaLore with ``--grad-accum``),
the lean setting gives way and a note says so in one line; where two of the user's own requests
conflict, that is an input error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medsaga.errors import InputError
from medsaga.methods.registry import method_class

LEAN = "lean"
SPEED = "speed"


@dataclass(frozen=True)
class MemoryProfile:
    """What a run's memory settings resolved to.

    Attributes:
        name: ``lean`` or ``speed``.
        method_options: the method's options with the profile's added (the user's kept as given).
        activation_checkpointing: recompute encoder blocks in backward.
        applied: the lean settings in force, as the report lists them (``layerwise``,
            ``activation_checkpointing``); the cache is reported by the cache itself.
        notes: one line per lean setting that gave way to a request of the user's.
    """

    name: str
    method_options: dict[str, Any]
    activation_checkpointing: bool
    applied: tuple[str, ...]
    notes: tuple[str, ...]

    def describe(self) -> str:
        """The line ``finetune`` prints before training, e.g. ``memory: lean (layerwise, ...)``."""
        if self.name == SPEED:
            return "memory: --speed (no lean settings: faster steps, a higher peak)"
        settings = ", ".join(self.applied) if self.applied else "nothing to save for this method"
        return f"memory: lean ({settings}); --speed trades memory back for time"


def resolve_memory_profile(method_name: str, method_options: dict[str, Any], *, speed: bool,
                           activation_checkpointing: bool | None, grad_accum: int) -> MemoryProfile:
    """The profile for a run (see the module docstring).

    Args:
        method_name: the ``--method``.
        method_options: the options the user gave (``-o``), as parsed.
        speed: ``--speed``.
        activation_checkpointing: ``--activation-checkpointing`` (True), ``--no-activation-checkpointing``
            (False) or neither (None: the profile decides).
        grad_accum: ``--grad-accum``.

    Raises:
        InputError: two of the user's own requests cannot combine.
    """
    method_type = method_class(method_name)
    options = dict(method_options)
    applied: list[str] = []
    notes: list[str] = []
    for option, value in ({} if speed else method_type.lean_options).items():
        if option in options:
            continue  # the user chose; a conflict of theirs is refused below
        conflict = method_type.lean_conflict(option, value, grad_accum=grad_accum)
        if conflict is not None:
            notes.append(f"memory: {option}={_text(value)} is off because {conflict}")
            continue
        options[option] = value
        applied.append(option if value is True else f"{option}={_text(value)}")
    for option, value in method_options.items():
        if option in method_type.lean_options and value == method_type.lean_options[option]:
            conflict = method_type.lean_conflict(option, value, grad_accum=grad_accum)
            if conflict is not None:
                raise InputError(f"-o {option}={_text(value)}: {conflict}; drop one of the two")
    if activation_checkpointing is None:
        checkpointing = not speed and not method_type.encoder_frozen
    else:
        checkpointing = activation_checkpointing
    if checkpointing and not method_type.encoder_frozen:
        applied.append("activation_checkpointing")
    return MemoryProfile(SPEED if speed else LEAN, options, checkpointing, tuple(applied), tuple(notes))


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
