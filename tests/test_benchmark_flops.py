"""FLOP counting, the matmul peak, and the benchmark worker's inference figures."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from medsaga.benchmark import flops
from medsaga.benchmark.flops import MatmulPeak, count_flops, fractions_of_peak, measure_matmul_peaks
from medsaga.benchmark.report import peak_shares, table_columns
from medsaga.benchmark.worker import RECORD_FIELDS, _time_inference
from medsaga.model.build import build_sam
from medsaga.model.fast_attention import is_sped_up, speed_up_encoder
from medsaga.model.sam_import import sam_modeling
from medsaga.model.segmenter import SamSegmenter


def test_linear_and_cpu_flash_attention_are_counted() -> None:
    assert count_flops(nn.Linear(8, 5), torch.randn(3, 8)) == 2 * 3 * 8 * 5
    q, k, v = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 11, 4), torch.randn(2, 3, 11, 6)
    with torch.no_grad(), flops.FlopCounterMode(display=False, custom_mapping=flops.FLOP_FORMULAS) as counter:
        F.scaled_dot_product_attention(q, k, v, attn_mask=torch.randn(2, 3, 7, 11))
    assert counter.get_total_flops() == 2 * 2 * 3 * 7 * 11 * (4 + 6)


@pytest.mark.parametrize("grid", [28, 16])
def test_fast_block_counts_sams_work_less_the_padding(grid: int) -> None:
    """At a multiple of the window nothing is padded: the fused attention counts as SAM's two
    matmuls (plus the zero token's qkv). At 16 x 16 SAM works on a 28 x 28 grid."""
    block = sam_modeling().image_encoder.Block(dim=96, num_heads=3, use_rel_pos=True, window_size=14,
                                               input_size=(14, 14)).eval()
    fast = copy.deepcopy(block)
    speed_up_encoder(fast)
    x = torch.randn(1, grid, grid, 96)
    sam, ours = count_flops(block, x), count_flops(fast, x)
    if grid == 28:
        assert ours == sam + 2 * 96 * 3 * 96
    else:
        assert 0.5 * sam > ours > 0.3 * sam


def test_matmul_peak_sweep_and_probe() -> None:
    peak = MatmulPeak(torch.float32)
    rate = peak.sweep(sizes=(64, 128), routes=("linear", "mm"), repeats=1)
    assert rate == peak.rate > 0 and peak.how.split()[0] in ("linear", "mm") and peak.how.endswith("³")
    probed = peak.probe()
    assert probed > 0 and peak.rate == max(rate, probed)  # the best seen: a slower probe never lowers it


def test_measure_matmul_peaks_in_both_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(flops.PEAK_SIZES, ("cpu", "fp32"), (128,))
    monkeypatch.setitem(flops.PEAK_SIZES, ("cpu", "bf16"), (64,))
    peaks = measure_matmul_peaks("cpu", repeats=1)
    assert set(peaks) == {"fp32", "bf16"} and all(rate > 0 for rate in peaks.values())
    assert fractions_of_peak(10.0, {"fp32": 40.0, "bf16": 0.0}) == {"fp32": 0.25, "bf16": None}
    assert fractions_of_peak(None, peaks) == {"fp32": None, "bf16": None}


class _Slices:
    """What ``_time_inference`` reads from the training data: ``len`` and ``batch(positions)``."""

    def __init__(self, count: int, size: int) -> None:
        self.images = torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, positions: list[int]) -> tuple[torch.Tensor, None]:
        return self.images[positions], None


@pytest.mark.parametrize("came_fast", [False, True])
def test_worker_times_sam_and_fast_inference_and_leaves_the_encoder_as_it_came(
        came_fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flops, "measure_matmul_peaks", lambda device: {"fp32": 50.0, "bf16": 10.0})
    torch.manual_seed(0)
    model = SamSegmenter(build_sam("tiny", num_classes=2, image_size=64))
    if came_fast:
        speed_up_encoder(model.sam.image_encoder)
    spec = SimpleNamespace(precision="fp32", steps=2, batch_size=2)
    figures = _time_inference(model, _Slices(3, 64), spec, torch.device("cpu"))

    assert set(figures) <= set(RECORD_FIELDS) and all(value is not None for value in figures.values())
    assert is_sped_up(model.sam.image_encoder) == came_fast
    assert len(figures["inference_batch_seconds"]) == len(figures["inference_sam_batch_seconds"]) == 2
    assert figures["inference_slices_per_second"] == pytest.approx(4 / sum(figures["inference_batch_seconds"]))
    fast = copy.deepcopy(model.sam.image_encoder)
    speed_up_encoder(fast)
    assert figures["encoder_flops_per_slice"] == count_flops(fast, torch.randn(1, 3, 64, 64))
    rate = figures["encoder_gflops_per_second"]
    assert rate > 0 and figures["encoder_sam_gflops_per_second"] > 0
    assert figures["matmul_peak_gflops_per_second"] == {"fp32": 50.0, "bf16": 10.0}
    assert figures["encoder_fraction_of_peak"] == pytest.approx({"fp32": rate / 50, "bf16": rate / 10})


def test_report_shows_the_inference_figures() -> None:
    entry = {"label": "lora", "status": "ok", "inference_slices_per_second": 12.5,
             "inference_sam_slices_per_second": 8.25, "encoder_gflops_per_second": 61.0,
             "encoder_fraction_of_peak": {"fp32": 0.412, "bf16": 1.81}}
    cells = {header: cell(entry) for header, cell in table_columns({"peak_memory_kind": "peak RSS"})}
    assert cells["infer sl/s"] == "12.5" and cells["SAM sl/s"] == "8.25" and cells["enc GF/s"] == "61"
    assert cells["% peak fp32 / bf16"] == "41% / 181%"
    assert peak_shares({"label": "x", "status": "out_of_memory"}) == "- / -"
