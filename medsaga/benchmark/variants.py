"""``--methods``: which methods the benchmark runs, each possibly with options and memory-saving flags.

Syntax (one string, entries separated by commas)::

    ENTRY   := METHOD[@FLAG]...[:KEY=VALUE[,KEY=VALUE]...]  |  all[@FLAG]...
    FLAG    := speed | bf16 | ckpt | cache | nocache | padded
                                      (finetune's --speed: the fast configuration instead of the lean
                                       default; bf16 autocast; activation checkpointing of the encoder
                                       blocks; training on cached frozen-encoder outputs, for the
                                       methods that have a frozen encoder part: decoder, adapter (on
                                       by default there); the whole model run every step instead
                                       (finetune --cache-embeddings off); SAM's own attention over
                                       zero-padded windows instead of the default exact no-padding
                                       attention, as ``finetune --attention sam``)
    VALUE   := true | false | a number | text; a list joins its items with '+' (targets=q+k+v)

An entry runs its method **as** ``finetune --method METHOD`` **runs it by default**: the lean memory
profile (:mod:`medsaga.train.memory_profile`: the method's lean options such as layer-wise GaLore,
activation checkpointing where the encoder trains, the embedding cache where the method has a
frozen part), resolved by the same function, so ``medsaga plan``'s ``lean`` row, the benchmark's
entry and a finetune run's report describe one configuration. ``@speed`` is ``finetune --speed``
(plan's ``speed`` row): no lean settings; the cache stays where the method can use it, as plan
counts it. Options and flags the entry gives win over the profile, as in finetune.

Examples::

    all                                   every registered method as finetune runs it by default
    all,all@speed                         ... and each in its fast configuration (plan's two rows)
    galore,galore@speed,full@speed        lean GaLore, plain GaLore, and classic full fine-tuning
    full@speed,full@speed@ckpt,full@bf16  full fine-tuning with each memory saving, side by side
    decoder@nocache,decoder               what the embedding cache does to the decoder's speed
    lora,lora@padded                      what skipping the window padding saves
    lora:rank=8,alpha=16,decoder          LoRA with two options, then the decoder-only method

A comma-separated piece that is ``KEY=VALUE`` (no colon, no ``@``) continues the options of the
entry before it; any other piece starts a new entry. Method names never contain ``=``, so this is
unambiguous. Flags go right after the method name (``full@ckpt:...``), never after an option value.
``--bf16`` and ``--activation-checkpointing`` add their flag to every entry.

This module only reads the text: whether a method's options are valid is checked by the method
itself (:func:`medsaga.methods.create_method`), before any measurement starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from medsaga.errors import InputError
from medsaga.methods.option_text import format_option_value, parse_option_value

FLAGS = ("speed", "bf16", "ckpt", "cache", "nocache", "padded")
ALL = "all"
REFERENCE_METHOD = "full"
LIST_SEPARATOR = "+"  # commas separate entries


@dataclass(frozen=True)
class Variant:
    """One benchmark entry: a method, its options, and the memory flags it runs with (module docstring).

    Attributes:
        method: a registered method name (``galore``, ``full``...).
        options: ``(key, value)`` pairs in the order given; empty means the method's defaults
            (plus the lean profile's, unless ``speed``).
        bf16: run the forward pass under bf16 autocast.
        checkpointing: recompute the encoder blocks in backward (forced on; without it the profile
            decides: on in the lean profile where the encoder trains).
        cache: train on the embedding cache (:mod:`medsaga.train.embedding_cache`): the timed steps
            read cached frozen-encoder outputs; the cache's build is timed apart. (On anyway for a
            method with a cacheable part, unless ``nocache``.)
        padded: SAM's own padded-window attention (training and inference) instead of the exact
            no-padding attention of :mod:`medsaga.model.fast_attention`.
        speed: ``finetune --speed``'s configuration instead of the lean default.
        nocache: no embedding cache (``finetune --cache-embeddings off``).
    """

    method: str
    options: tuple[tuple[str, Any], ...] = ()
    bf16: bool = False
    checkpointing: bool = False
    cache: bool = False
    padded: bool = False
    speed: bool = False
    nocache: bool = False

    @property
    def label(self) -> str:
        """The entry as written in the canonical syntax, e.g. ``galore@ckpt:layerwise=true``."""
        on = (self.speed, self.bf16, self.checkpointing, self.cache, self.nocache, self.padded)
        flags = [flag for flag, flagged in zip(FLAGS, on) if flagged]
        text = self.method + "".join(f"@{flag}" for flag in flags)
        if self.options:
            text += ":" + ",".join(f"{key}={format_value(value)}" for key, value in self.options)
        return text

    @property
    def precision(self) -> str:
        """``"bf16"`` or ``"fp32"``, as :class:`~medsaga.train.loop.LoopSettings` takes it."""
        return "bf16" if self.bf16 else "fp32"

    def options_dict(self) -> dict[str, Any]:
        return dict(self.options)


def parse_variants(text: str, method_names: Sequence[str], *, bf16: bool = False,
                   checkpointing: bool = False) -> list[Variant]:
    """Read ``--methods`` (module docstring) into variants, in order, without duplicates.

    ``bf16`` and ``checkpointing`` (the global flags) are switched on in every variant.

    Raises:
        InputError: an empty entry, an unknown method or flag, an option without an entry to
            belong to, a malformed ``KEY=VALUE``.
    """
    variants: list[Variant] = []
    # Options of the entry being read; None when the last entry took no options (no colon).
    open_options: list[tuple[str, Any]] | None = None
    pieces = [piece.strip() for piece in text.split(",")]
    if not text.strip():
        raise InputError("--methods is empty; give method names (or all), e.g. --methods all")
    for piece in pieces:
        if not piece:
            raise InputError(f"--methods {text!r} has an empty entry (two commas, or one at an end)")
        if _is_continuation(piece):
            if open_options is None:
                raise InputError(f"--methods: option {piece!r} follows no method; options come after a method "
                                 f"and a colon, e.g. galore:{piece}")
            open_options.append(_parse_option(piece))
            variants[-1] = replace(variants[-1], options=tuple(open_options))
            continue
        head, colon, first_option = piece.partition(":")
        name, *flags = [part.strip() for part in head.split("@")]
        unknown_flags = [flag for flag in flags if flag not in FLAGS]
        if unknown_flags:
            raise InputError(f"--methods: unknown flag @{unknown_flags[0]} in {piece!r}; flags are "
                             f"{', '.join('@' + f for f in FLAGS)}")
        flag_bf16 = bf16 or "bf16" in flags
        flag_ckpt = checkpointing or "ckpt" in flags
        flag_cache = "cache" in flags
        flag_padded = "padded" in flags
        flag_speed, flag_nocache = "speed" in flags, "nocache" in flags
        if flag_cache and flag_nocache:
            raise InputError(f"--methods: {piece!r}: @cache and @nocache contradict each other; drop one")
        if name == ALL:
            if colon:
                raise InputError(f"--methods: {piece!r}: 'all' takes flags (all@ckpt) but no options")
            variants.extend(Variant(method, (), flag_bf16, flag_ckpt, flag_cache, flag_padded, flag_speed, flag_nocache)
                            for method in method_names)
            open_options = None
            continue
        if name not in method_names:
            raise InputError(f"--methods: unknown method {name!r}; choose from {', '.join(method_names)} "
                             f"or {ALL}")
        if colon:
            if "@" in first_option:
                raise InputError(f"--methods: {piece!r}: flags go right after the method name, "
                                 f"e.g. {name}@ckpt:{first_option.split('@')[0]}")
            open_options = [_parse_option(first_option)]
        else:
            open_options = None
        variants.append(Variant(name, tuple(open_options or ()), flag_bf16, flag_ckpt, flag_cache, flag_padded,
                                flag_speed, flag_nocache))
    return _unique(variants)


def with_reference(variants: Sequence[Variant], *, bf16: bool = False,
                   checkpointing: bool = False) -> tuple[list[Variant], Variant, bool]:
    """The variants with the reference (plain ``full``, with the global flags) included.

    Returns ``(variants, reference, added)``: ``added`` says it was not listed and was appended.
    """
    reference = Variant(REFERENCE_METHOD, (), bf16, checkpointing)
    if reference in variants:
        return list(variants), reference, False
    return [*variants, reference], reference, True


def parse_value(text: str) -> Any:
    """One option value: ``true``/``false``, a number, ``a+b`` → ``("a", "b")``, else the text."""
    return parse_option_value(text, LIST_SEPARATOR)


def format_value(value: Any) -> str:
    """The inverse of :func:`parse_value` for labels: ``True`` → ``true``, lists joined with ``+``."""
    return format_option_value(value, LIST_SEPARATOR)


def _is_continuation(piece: str) -> bool:
    key = piece.split("=", 1)[0]
    return "=" in piece and ":" not in key and "@" not in key


def _parse_option(text: str) -> tuple[str, Any]:
    key, equals, value = text.partition("=")
    key, value = key.strip().replace("-", "_"), value.strip()
    if not equals or not key or not value:
        raise InputError(f"--methods: option {text!r} is not KEY=VALUE")
    if "@" in value:
        raise InputError(f"--methods: option {text!r}: flags go right after the method name "
                         "(e.g. galore@ckpt:layerwise=true)")
    return key, parse_value(value)


def _unique(variants: list[Variant]) -> list[Variant]:
    """Drop repeats (``all,full`` names ``full`` twice), keeping the first occurrence."""
    seen: set[str] = set()
    kept = []
    for variant in variants:
        if variant.label not in seen:
            seen.add(variant.label)
            kept.append(variant)
    return kept
