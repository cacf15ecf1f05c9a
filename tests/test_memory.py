"""The training memory report: the breakdown's meters, the CPU peak and the allocator settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from medsaga.methods.parser import ParserMethod, reconstructed_layers
from medsaga.train import allocator
from medsaga.train.memory import (MemoryBreakdown, PeakMemory, SavedActivationMeter, StepTensorPeak, current_rss_bytes,
                                  parameter_bytes)
from tests.method_helpers import synthetic_batch, tiny_segmenter

MIB = 2**20


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class _Projection(nn.Module):
    """``(x * scale) @ basis``: ``basis`` is a buffer that ``mm`` saves for backward (through a view)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(size))
        self.register_buffer("basis", torch.randn(size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.scale) @ self.basis.t()


def test_a_buffer_saved_for_backward_is_not_an_activation() -> None:
    model = _Projection(256)
    x = torch.randn(8, 256)
    meter = SavedActivationMeter(model)
    with meter.measure():
        model(x).sum().backward()
    # mul saves x (for the gradient of scale); mm saves only the basis, through a view (for the
    # gradient of x * scale; the basis itself needs none): x is the one activation.
    assert meter.peak == _bytes(x)
    assert _bytes(model.basis) == 32 * _bytes(x)  # what the old meter (parameters only) added


@contextmanager
def _saved_storages() -> Iterator[dict[int, int]]:
    """Every storage autograd saves inside the block: ``{address: bytes}``."""
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield saved


def test_parser_bases_are_frozen_memory_not_saved_activations() -> None:
    model = tiny_segmenter()
    ParserMethod().prepare(model)
    images, _ = synthetic_batch(batch=1)
    meter = SavedActivationMeter(model)
    with meter.measure():
        model(images)
    with _saved_storages() as saved:  # the same forward again, every saved storage recorded
        model(images)

    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    bases = {t.untyped_storage().data_ptr(): _bytes(t) for layer in reconstructed_layers(model)
             for t in (layer.U, layer.V)}
    # Every layer's U is saved (the gradient of S needs it): the old meter counted them.
    saved_bases = sum(size for pointer, size in saved.items() if pointer in bases)
    assert saved_bases >= sum(_bytes(layer.U) for layer in reconstructed_layers(model)) > 0
    parameters_only = sum(size for pointer, size in saved.items() if pointer not in parameters)
    by_hand = sum(size for pointer, size in saved.items() if pointer not in parameters and pointer not in bases)
    assert meter.peak == by_hand == parameters_only - saved_bases

    # The bases count as frozen memory instead, with every other buffer.
    frozen, trainable = parameter_bytes(model)
    buffers = sum(_bytes(b) for b in model.buffers())
    assert frozen == sum(_bytes(p) for p in model.parameters() if not p.requires_grad) + buffers
    assert buffers >= sum(bases.values())
    assert trainable == sum(_bytes(p) for p in model.parameters() if p.requires_grad)


def test_a_buffer_viewing_a_parameter_is_counted_once() -> None:
    layer = nn.Linear(16, 16)
    layer.register_buffer("alias", layer.weight.detach()[:4])
    layer.requires_grad_(False)
    assert parameter_bytes(layer) == (_bytes(layer.weight) + _bytes(layer.bias), 0)


def test_breakdown_reports_a_sum_of_peaks_not_a_total() -> None:
    breakdown = MemoryBreakdown(1, 2, 3, 4, 5)
    assert breakdown.to_json() == {"frozen_parameters": 1, "trainable_parameters": 2, "gradients": 3,
                                   "optimizer_state": 4, "saved_activations": 5, "sum_of_peaks": 15}


def test_cpu_peak_ignores_a_higher_peak_before_the_baseline() -> None:
    before = np.ones(96 * MIB // 8)  # touched: resident, then freed (a mapping of its own)
    del before
    peak = PeakMemory(torch.device("cpu"))
    rss_at_baseline = current_rss_bytes()
    assert peak.peak_above_baseline() < 16 * MIB
    during = np.ones(48 * MIB // 8)
    described = peak.describe()
    del during
    assert 40 * MIB < described["peak_above_baseline_bytes"] < 80 * MIB
    assert described["kind"] == "peak RSS" and described["peak_reset_at_baseline"] is True
    # Against the RSS right after the baseline, not after `del during`: whether glibc hands a
    # freed 48 MiB block back at once depends on what earlier tests did to its mmap threshold.
    assert abs(described["baseline_bytes"] - rss_at_baseline) < 32 * MIB


# --- the allocator -----------------------------------------------------------------------------------

# In a fresh interpreter: free a 16 MiB block (glibc then raises its mmap threshold to 16 MiB unless
# it is fixed), allocate 16 blocks of twice the fixed threshold, touch them, free every other one;
# print the RSS given back.
_FRAGMENT = """
import ctypes, json
from medsaga.train.allocator import MMAP_THRESHOLD, tune_malloc
tuned = tune_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = libc.malloc(16 << 20); ctypes.memset(big, 1, 16 << 20); libc.free(big)
size = 2 * MMAP_THRESHOLD
blocks = [libc.malloc(size) for _ in range(16)]
for block in blocks:
    ctypes.memset(block, 1, size)
before = rss()
for block in blocks[::2]:
    libc.free(block)
print(json.dumps({"tuned": tuned, "given_back": (before - rss()) / (8 * size)}))
"""


def _fragment(**environment: str) -> dict:
    env = {**os.environ, **environment}
    result = subprocess.run([sys.executable, "-c", _FRAGMENT], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_fixed_mmap_threshold_gives_freed_blocks_back() -> None:
    default = _fragment(MEDSAGA_TUNE_MALLOC="0")
    tuned = _fragment()
    assert default["tuned"] == {}
    assert tuned["tuned"] == {"M_MMAP_THRESHOLD": allocator.MMAP_THRESHOLD, "M_TRIM_THRESHOLD": 128 * 1024}
    # The freed blocks (fraction given back): glibc's dynamic threshold keeps them resident in the
    # heap, the fixed one unmaps them.
    assert default["given_back"] < 0.1
    assert tuned["given_back"] > 0.95


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc only")
def test_the_user_environment_wins() -> None:
    assert _fragment(MALLOC_MMAP_THRESHOLD_="65536")["tuned"] == {"M_TRIM_THRESHOLD": 128 * 1024}


def test_tune_malloc_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_applied", {})
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.tune_malloc() == {} and not allocator.release_free_memory()
    assert allocator.malloc_settings() == {}


def test_step_tensor_peak_counts_what_is_alive_at_once_not_what_was_allocated() -> None:
    mib = 2**20
    with StepTensorPeak(held_bytes=5 * mib) as meter:
        first = torch.ones(8 * mib // 4)  # 8 MiB
        second = torch.ones(4 * mib // 4)  # 12 MiB alive together
        del first, second
        third = torch.ones(10 * mib // 4)  # 10 MiB: below the earlier 12
        del third
    assert meter.measured
    assert 12 * mib <= meter.in_step_bytes < 13 * mib
    assert meter.bytes == meter.in_step_bytes + 5 * mib
    report = meter.describe(step=2)
    assert report["step"] == 2 and report["bytes"] == meter.bytes and report["held_bytes"] == 5 * mib


def test_step_tensor_peak_ignores_tensors_from_before_the_step() -> None:
    before = torch.ones(16 * 2**20 // 4)
    with StepTensorPeak(held_bytes=0) as meter:
        del before  # freeing an older tensor never lowers the figure below what the step allocated
        small = torch.ones(2**20 // 4)
        del small
    assert meter.measured and 2**20 <= meter.in_step_bytes < 2 * 2**20


def test_the_loop_reports_the_tensor_peak_of_its_second_step(tmp_path) -> None:
    from medsaga.methods import create_method
    from medsaga.train.augment import AugmentSettings, Augmenter
    from medsaga.train.loop import LoopSettings, SilentObserver, train
    from tests.train_helpers import SIZE, cache_slices

    model = tiny_segmenter(image_size=SIZE)
    method = create_method("galore")
    method.prepare(model)
    result = train(model, method, cache_slices(), LoopSettings(steps=3, batch_size=2), tmp_path, SilentObserver(),
                   Augmenter(AugmentSettings(), 0), device=torch.device("cpu"))
    peak = result.tensor_peak
    assert peak is not None and peak["measured"] and peak["step"] == 2
    # Held between steps: the optimizer state; inside the step at least the saved activations and
    # the gradients are alive together at the end of backward's first use of them.
    assert peak["held_bytes"] == result.memory.optimizer_state
    assert peak["in_step_bytes"] >= result.memory.saved_activations
    assert peak["in_step_bytes"] >= result.memory.gradients


def test_gradient_meter_counts_gradients_alive_together_across_steps() -> None:
    from medsaga.train.memory import GradientMeter

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 32, bias=False))

    piled = net()
    meter = GradientMeter(piled)
    for _ in range(3):  # three steps: gradients dropped in between, so the peak does not grow
        piled.zero_grad(set_to_none=True)
        meter.gradients_freed()
        piled(torch.randn(4, 64)).sum().backward()
    assert meter.peak == (64 * 64 + 64 * 32) * 4

    layerwise = net()
    for parameter in layerwise.parameters():  # registered first: frees each gradient, as layer-wise GaLore
        parameter.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    meter = GradientMeter(layerwise)
    layerwise(torch.randn(4, 64)).sum().backward()
    assert meter.peak == 64 * 64 * 4  # the largest single gradient


def test_step_tensor_peak_keeps_the_profilers_native_logging_off_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    before = torch.ones(2**16)
    with StepTensorPeak(held_bytes=0):
        del before  # c10 warns natively about a block allocated before profiling started
        torch.ones(10).sum()
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError, match="inside"):
        with StepTensorPeak(held_bytes=0):
            raise RuntimeError("inside")
    os.write(2, b"stderr is back\n")
    assert capfd.readouterr().err == "stderr is back\n"
