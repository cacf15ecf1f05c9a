"""Several processes, one job: ``torch.distributed`` as ``torchrun`` sets it up.

``torchrun --nproc-per-node N -m medsaga finetune ...`` starts N copies of the command with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment. Each copy calls
:func:`init_from_environment` once: it joins the process group (NCCL on GPUs, gloo on CPUs) and
returns its :class:`Rank`. Without torchrun (``WORLD_SIZE`` unset or 1) nothing is initialised and
every helper here is the single-process identity, so the library has one code path.

What the rest of medsaga asks of this module:

* :func:`global_sum`: a differentiable all-reduce, for the few quantities of a step that span the
  whole global batch (the soft Dice's sums, BatchNorm's statistics). Its backward all-reduces the
  gradient too, so that DDP's average of the ranks' gradients is the gradient of the global loss.
* :func:`gather_objects`, :func:`barrier`, :func:`cpu_all_reduce_`: small collectives for reports,
  ordering of file writes and the shared embedding cache (host memory, so a gloo group even when
  the main backend is NCCL).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Rank:
    """Where this process stands in the job.

    Attributes:
        rank: global rank ``0 .. world_size - 1``; rank 0 writes every file.
        world_size: processes in the job (over all nodes).
        local_rank: rank on this node (picks the GPU).
        backend: ``"nccl"``, ``"gloo"``, or ``"none"`` for a single process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, count: int) -> slice:
        """This rank's contiguous part of ``count`` items split evenly (``count`` divisible by the world)."""
        share = count // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def to_json(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}


SINGLE = Rank()
_current: Rank = SINGLE
_cpu_group: Any = None


def launched_by_torchrun() -> bool:
    """``WORLD_SIZE`` above 1 in the environment: this process is one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str = "auto") -> Rank:
    """Join torchrun's process group (once per process) and return this process's :class:`Rank`.

    ``device`` is the command's ``--device``: ``cpu`` forces gloo even where CUDA exists; with CUDA
    each rank takes GPU ``LOCAL_RANK`` (NCCL). Called again, it returns the rank already joined.
    """
    global _current, _cpu_group
    if not launched_by_torchrun():
        return SINGLE
    if dist.is_initialized():
        return _current
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    # A long timeout: rank 0 alone writes the run folder and may plan memory while the others wait.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    _cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    _current = Rank(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _current


def current() -> Rank:
    """The rank joined by :func:`init_from_environment`, or the single process."""
    return _current


def device_for(rank: Rank, device: torch.device) -> torch.device:
    """A CUDA rank's own GPU (``cuda:LOCAL_RANK``); any other device as it is."""
    if device.type == "cuda" and rank.distributed:
        return torch.device("cuda", rank.local_rank)
    return device


class _GlobalSum(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the incoming gradient.

    Every rank's loss uses the global value, and DDP averages the ranks' parameter gradients; the
    backward sum turns that average into the gradient of the mean of the ranks' losses, which is
    the single-process loss of the whole global batch.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks (differentiable); ``tensor`` itself in a single process."""
    if not _current.distributed:
        return tensor
    return _GlobalSum.apply(tensor)


def mean_over_ranks(value: float) -> float:
    """A float averaged over ranks (the logged loss of a step: the mean of the ranks' losses)."""
    if not _current.distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total, group=_cpu_group)
    return float(total.item()) / _current.world_size


def average_gradient_(grad: torch.Tensor) -> None:
    """Replace ``grad`` by its mean over ranks, in place (layer-wise GaLore's hook, before its update)."""
    if _current.distributed:
        dist.all_reduce(grad)
        grad.div_(_current.world_size)


def cpu_all_reduce_(tensor: torch.Tensor) -> None:
    """Sum a host tensor over ranks in place, through gloo (the embedding cache lives on the CPU)."""
    if _current.distributed:
        dist.all_reduce(tensor, group=_cpu_group)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (``[value]`` in a single process)."""
    if not _current.distributed:
        return [value]
    gathered: list[Any] = [None] * _current.world_size
    dist.all_gather_object(gathered, value, group=_cpu_group)
    return gathered


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not _current.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here (rank 0 has written what the others read next)."""
    if _current.distributed:
        dist.barrier(group=_cpu_group)


class CrossRankBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the global batch of all ranks.

    ``torch.nn.SyncBatchNorm`` does the same but only for GPU tensors; this one is one code path on
    CPU (gloo) and GPU: per-channel sums, sums of squares and counts go through :func:`global_sum`,
    so the normalisation, its gradient and the running statistics equal single-process BatchNorm on
    the whole batch (to float rounding). In eval mode, or in a single process, it is BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _current.distributed):
            return super().forward(x)
        dims = (0, 2, 3)
        count = torch.tensor([x.shape[0] * x.shape[2] * x.shape[3]], dtype=x.dtype, device=x.device)
        stats = global_sum(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        channels = x.shape[1]
        total = stats[-1]
        mean = stats[:channels] / total
        variance = stats[channels:2 * channels] / total - mean * mean  # biased: what normalises
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                unbiased = variance * (total / (total - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
                self.num_batches_tracked.add_(1)
        shape = (1, channels, 1, 1)
        normalised = (x - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        if self.affine:
            normalised = normalised * self.weight.view(shape) + self.bias.view(shape)
        return normalised


def sync_batch_norms(model: nn.Module) -> int:
    """Make every BatchNorm2d of ``model`` a :class:`CrossRankBatchNorm2d` in place (same
    parameters, buffers and state-dict keys); returns how many. Frozen BatchNorms run in eval mode
    and are unaffected."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = CrossRankBatchNorm2d
            changed += 1
    return changed
