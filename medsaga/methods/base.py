"""The one interface every tuning method implements.

A method (see DESIGN.md):

1. takes the built model and its options, and marks or wraps what trains (everything else frozen);
2. returns the optimizer param groups, or builds its own optimizer (GaLore does);
3. may add an auxiliary loss (Conv-LoRA's load balancing);
4. says whether the image encoder runs without gradients, and which frozen part of it (if any)
   may be computed once and cached (:meth:`TuningMethod.frozen_encoder`,
   :meth:`TuningMethod.forward_from_frozen`; see :mod:`medsaga.train.embedding_cache`);
5. hands over exactly what it trained, to be saved as safetensors, with its options as JSON.

The training loop, prediction and the benchmark never branch on a method's name: they call this
interface. Compare HF PEFT's tuners: each method self-contained behind one protocol, found by name
in a registry (:mod:`medsaga.methods.registry`). A method never branches on the image encoder
either: what it needs to know of it (attention layers, linear weights, convolutions, blocks,
embedding shape) it asks the encoder's :class:`~medsaga.model.backbone.Backbone`
(:func:`encoder_backbone`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from medsaga.model.backbone import Backbone, backbone_of, base_encoder

# Parameter dtypes torch's fused AdamW takes (on CPU and CUDA).
FUSED_ADAM_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class MethodOptions:
    """Options common to all methods; each method subclasses this with its own fields, which its
    ``__post_init__`` checks and puts in canonical form with
    :func:`~medsaga.methods.options.check_fields` (the same rules for every method)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (tuples become lists)."""
        return asdict(self)


OptionsT = TypeVar("OptionsT", bound=MethodOptions)
"""A method's options type: ``class GaLoreMethod(TuningMethod[GaLoreOptions])``."""


class TuningMethod(ABC, Generic[OptionsT]):
    """Base class of the tuning methods, generic over their options type.

    A method subclasses ``TuningMethod[ItsOptions]``, so that ``self.options`` is typed as its own
    options (checked at construction against :attr:`options_type`).

    Class attributes a method sets:
        name: the ``--method`` value.
        options_type: its options dataclass (the type argument of ``TuningMethod[...]``), whose
            ``__post_init__`` checks every field with :func:`medsaga.methods.options.check_fields`.
        default_lr: the learning rate used when the user gives none (documented per method).
        default_weight_decay: AdamW's decoupled weight decay; 0.1 as SAMed and MedSAGa.
        encoder_frozen: the image encoder gets no gradient; the loop runs it under ``no_grad``.
        encoder_cacheable: part of the image encoder (the whole of it, or a frozen module inside
            it) is frozen, deterministic and reads nothing but the normalised image, so its output
            can be computed once per training image and cached. Such a method says which part with
            :meth:`frozen_encoder` and how to finish the forward pass from its output with
            :meth:`forward_from_frozen`. Known before the model is built (the CLI checks
            ``--cache-embeddings on`` against it before any work).
        cache_needs_images: :meth:`forward_from_frozen` also reads the image (the adapter's CNN
            does; the decoder-only method does not), so a cache must keep the images too.
        lean_options: option values that lower this method's memory peak at some cost in time;
            ``finetune`` applies them by default (``--speed`` does not), never over an option the
            user gave (:mod:`medsaga.train.memory_profile`).
    """

    name: ClassVar[str]
    options_type: type[OptionsT]  # a class attribute (a ClassVar cannot hold a type variable)
    default_lr: ClassVar[float]
    default_weight_decay: ClassVar[float] = 0.1
    encoder_frozen: ClassVar[bool] = False
    encoder_cacheable: ClassVar[bool] = False
    cache_needs_images: ClassVar[bool] = False
    lean_options: ClassVar[dict[str, Any]] = {}

    @classmethod
    def lean_conflict(cls, option: str, value: Any, *, grad_accum: int) -> str | None:
        """Why ``option=value`` of :attr:`lean_options` cannot run with these loop settings, or
        ``None`` when it can (a clause: "... is off because <it>")."""
        return None

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = options if options is not None else self.options_type()
        if not isinstance(self.options, self.options_type):
            raise TypeError(f"{self.name} takes {self.options_type.__name__}, got {type(self.options).__name__}")

    @abstractmethod
    def prepare(self, model: nn.Module) -> None:
        """Freeze ``model`` (a :class:`~medsaga.model.segmenter.SamSegmenter`) except what this
        method trains; wrap layers where the method needs to. Called once, before training."""

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer param groups over the trainable parameters (default: one AdamW group)."""
        return [{"params": trainable_parameters(model), "lr": lr, "weight_decay": weight_decay}]

    def build_optimizer(self, model: nn.Module, lr: float, weight_decay: float, *,
                        decoder_lr: float | None = None) -> torch.optim.Optimizer:
        """The optimizer for :meth:`param_groups` (default: ``torch.optim.AdamW``, fused where it can be).

        Fused: one kernel per step instead of a dozen per parameter, and no temporaries the size
        of the parameters; on a CPU it makes a cached decoder-only step 25 % faster (59.6 → 44.4 ms
        for ViT-B's decoder at 256 px, batch 2). The same update up to float rounding.
        ``decoder_lr``: the mask decoder's own learning rate (:func:`with_decoder_lr`); ``None``:
        ``lr``, in the method's own groups.
        """
        groups = with_decoder_lr(self.param_groups(model, lr, weight_decay), model, decoder_lr)
        parameters = [p for group in groups for p in group["params"]]
        fused = bool(parameters) and all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_ADAM_DTYPES
                                         for p in parameters)
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)

    def auxiliary_loss(self, model: nn.Module) -> torch.Tensor | None:
        """An extra loss term from the last forward pass, added to the task loss; ``None`` if none."""
        return None

    def frozen_encoder(self, model: nn.Module) -> nn.Module | None:
        """The frozen part of the image encoder whose output may be cached, or ``None``.

        It takes the *normalised* image ``(B, 3, S, S)`` (:meth:`SamSegmenter.normalize`) and must be
        deterministic (no dropout, no batch statistics) and untouched by training, so that running
        it once per image gives what every training step would compute. Default: the whole image
        encoder when :attr:`encoder_cacheable` (a method that freezes all of it), else ``None``.
        """
        return image_encoder(model) if self.encoder_cacheable else None

    def forward_from_frozen(self, model: nn.Module, frozen_output: torch.Tensor,
                            images: torch.Tensor | None) -> torch.Tensor:
        """Logits ``(B, C+1, S/4, S/4)`` from the output of :meth:`frozen_encoder` (cached, or just
        computed) and, when :attr:`cache_needs_images`, the images ``(B, 3, S, S)`` in [0, 1] that
        output came from (``None`` otherwise). Must equal ``model(images)``. Default (the frozen
        part is the whole encoder): the mask decoder on the embeddings.
        """
        if not self.encoder_cacheable:
            raise TypeError(f"method {self.name!r} has no cacheable frozen encoder part")
        return model.decode(frozen_output)  # type: ignore[operator, no-any-return]

    def trained_buffers(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Buffers that training changes and that must be saved (e.g. BatchNorm statistics), by
        their name in ``model``. Default: none."""
        return {}

    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Exactly what this method trained, by name (detached, contiguous, on CPU): every
        parameter with ``requires_grad`` after :meth:`prepare`, and :meth:`trained_buffers`."""
        state = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
        state.update(self.trained_buffers(model))
        return {name: value.detach().cpu().contiguous() for name, value in state.items()}

    def load_trained_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Put a :meth:`trained_state` back into a prepared ``model``; names must match exactly."""
        expected = self.trained_state(model)
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"{self.name} state does not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        targets = {**dict(model.named_parameters()), **self.trained_buffers(model)}
        with torch.no_grad():
            for name, value in state.items():
                target = targets[name]
                if target.shape != value.shape:
                    raise ValueError(f"{name}: saved shape {tuple(value.shape)} != model {tuple(target.shape)}")
                target.copy_(value.to(dtype=target.dtype))


def with_decoder_lr(groups: list[dict[str, Any]], model: nn.Module, decoder_lr: float | None) -> list[dict[str, Any]]:
    """``groups`` with the mask decoder's parameters moved into a last group of their own at
    ``decoder_lr`` (keeping the weight decay of the group they came from); unchanged for ``None``.

    Why: the prompt-free head's mask tokens and hypernetworks are new to the model, and on some
    encoders they need a larger step than the encoder's pretrained weights should take (see
    :attr:`Backbone.decoder_learning_rate <medsaga.model.backbone.Backbone.decoder_learning_rate>`).
    Items may be parameters or ``(name, parameter)`` pairs, as the method's groups hold them.
    """
    if decoder_lr is None:
        return groups
    decoder = {id(parameter) for parameter in mask_decoder(model).parameters()}
    kept: list[dict[str, Any]] = []
    moved: list[Any] = []
    decay: float | None = None
    for group in groups:
        params = list(group["params"])
        ours = [item for item in params if id(item[1] if isinstance(item, tuple) else item) in decoder]
        if ours:
            moved.extend(ours)
            decay = group.get("weight_decay", decay)
        rest = [item for item in params if id(item[1] if isinstance(item, tuple) else item) not in decoder]
        if rest:
            kept.append({**group, "params": rest})
    if not moved:
        return groups
    decoder_group: dict[str, Any] = {"params": moved, "lr": decoder_lr}
    if decay is not None:
        decoder_group["weight_decay"] = decay
    return kept + [decoder_group]


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module`` that require gradients, in registration order."""
    return [parameter for parameter in module.parameters() if parameter.requires_grad]


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` number of parameter elements."""
    total = trainable = 0
    for parameter in module.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def freeze(module: nn.Module) -> None:
    """Stop gradients to every parameter of ``module``."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    """Let gradients reach every parameter of ``module``."""
    for parameter in module.parameters():
        parameter.requires_grad_(True)


def image_encoder(model: nn.Module) -> nn.Module:
    """The image encoder of a :class:`~medsaga.model.segmenter.SamSegmenter` (or the wrapper a method put
    in its place; the segmenter's ``replace_image_encoder`` is how one does)."""
    return model.image_encoder  # type: ignore[no-any-return]


def base_image_encoder(model: nn.Module) -> nn.Module:
    """The pretrained image encoder itself (inside a method's wrapper, if one replaced it)."""
    return base_encoder(image_encoder(model))


def encoder_backbone(model: nn.Module) -> tuple[nn.Module, Backbone]:
    """The pretrained image encoder and its :class:`~medsaga.model.backbone.Backbone`."""
    encoder = base_image_encoder(model)
    return encoder, backbone_of(encoder)


def mask_decoder(model: nn.Module) -> nn.Module:
    """The SAM mask decoder inside a segmenter (trained fully by every method, as in the papers)."""
    return model.sam.mask_decoder  # type: ignore[no-any-return]


def unfreeze_mask_decoder(model: nn.Module) -> None:
    """Let the mask decoder train, all but its IoU-prediction head.

    The prompt-free head never reads the IoU prediction, so that MLP would get no gradient: marking
    it trainable would only inflate the trainable count and the saved state.
    """
    decoder = mask_decoder(model)
    unfreeze(decoder)
    freeze(decoder.iou_prediction_head)
