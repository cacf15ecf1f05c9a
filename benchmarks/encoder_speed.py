"""Image-encoder inference speed: SAM's attention against medsaga's exact fast attention.

For each input size, batch and dtype it prints the encoder's FLOPs (counted with
``torch.utils.flop_counter.FlopCounterMode``), the time per image of SAM's encoder and of the
sped-up copy (:func:`medsaga.model.fast_attention.speed_up_encoder`), the achieved GFLOP/s and
that rate as a share of the fp32 and the bf16 matmul peak measured in the same run (a large
square matmul, best of several, also probed between the encoder runs).

Two FLOP counts, because SAM's windowed blocks do work on padding:

* ``sam GF``: what SAM's encoder executes, padded windows included;
* ``need GF``: what the fast encoder executes (real tokens, one merged key per padded window):
  the work the output needs. ``GF/s`` divides this by each encoder's time, so both rates measure
  useful work and compare directly; ``sam GF/s*`` credits SAM with its padded work too.

``FlopCounterMode`` has no formula for the CPU flash-attention op; :mod:`medsaga.benchmark.flops`
gives one (``2·L·S·(E + Ev)`` per batch and head, as torch's formula for the other SDPA kernels).

Timings on a shared machine are noisy (its load can change several-fold within minutes): each
configuration alternates SAM and fast runs, keeps the best of each, and holds the fast rate
against the best matmul probes taken between its own runs, not against a peak from another time. bf16 means CPU autocast; on CPUs without native bf16 matmul (AVX2 only) bf16
is far slower than fp32, and the peak measured here shows it.

    .venv/bin/python benchmarks/encoder_speed.py                        # vit_b, 256 and 512, B 1 and 4
    .venv/bin/python benchmarks/encoder_speed.py --sizes 512 --batches 1 4 --dtypes fp32
"""

from __future__ import annotations

import argparse
import copy
import time
from contextlib import nullcontext

import torch

from medsaga.benchmark.flops import DTYPES, MatmulPeak, count_flops
from medsaga.model.build import build_sam
from medsaga.model.fast_attention import speed_up_encoder
from records import save_record


def sweep(peak: MatmulPeak) -> None:
    """Square products at the default sizes; ``torch.mm`` as well as ``F.linear`` in fp32 (they can
    take different kernels). Not bf16 ``mm``: without native bf16 it takes ~50x the time of bf16
    ``linear`` (4.7 s for 1024³ here), and the encoder's products are all ``linear``."""
    peak.sweep(routes=("mm", "linear") if peak.dtype == torch.float32 else ("linear",))


def bench(model_type: str, size: int, batch: int, dtype_name: str, repeats: int,
          peaks: dict[str, MatmulPeak]) -> dict[str, float]:
    """Time SAM's encoder and the fast one at one configuration, probing the ``peaks`` between
    runs (``peak_<dtype>``: the best probe of this configuration); FLOPs per image."""
    torch.manual_seed(0)
    original = build_sam(model_type, num_classes=2, image_size=size).image_encoder.eval()
    with torch.no_grad():  # SAM zero-initialises the position tables; make them count
        for block in original.blocks:
            block.attn.rel_pos_h.normal_(0, 0.5)
            block.attn.rel_pos_w.normal_(0, 0.5)
    fast = copy.deepcopy(original)
    speed_up_encoder(fast)
    x = torch.randn(batch, 3, size, size)
    one = x[:1]
    sam_flops, need_flops = count_flops(original, one), count_flops(fast, one)
    autocast = (torch.autocast("cpu", dtype=DTYPES[dtype_name]) if dtype_name != "fp32" else nullcontext())
    times = {"sam": [], "fast": []}
    row_peaks = dict.fromkeys(peaks, 0.0)
    with torch.no_grad():
        with autocast:
            difference = (original(x).float() - fast(x).float()).abs().max().item()  # also the warm-up
        for _ in range(repeats):  # alternate, so both see the same share of the machine's load
            with autocast:
                for name, model in (("sam", original), ("fast", fast)):
                    start = time.perf_counter()
                    model(x)
                    times[name].append(time.perf_counter() - start)
            for name, peak in peaks.items():
                row_peaks[name] = max(row_peaks[name], peak.probe())
    return {"sam_gf": sam_flops / 1e9, "need_gf": need_flops / 1e9, "diff": difference,
            "sam_s": min(times["sam"]) / batch, "fast_s": min(times["fast"]) / batch,
            **{f"peak_{name}": rate for name, rate in row_peaks.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--bf16-batches", type=int, nargs="+", default=[1, 4],
                        help="batches run in bf16 (slow on CPUs without native bf16)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per encoder (fp32)")
    parser.add_argument("--bf16-repeats", type=int, default=2, help="timed runs per encoder (bf16)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")

    peaks = {name: MatmulPeak(DTYPES[name]) for name in args.dtypes}
    for peak in peaks.values():
        sweep(peak)
    rows = []
    for dtype_name in args.dtypes:
        batches = args.batches if dtype_name == "fp32" else args.bf16_batches
        repeats = args.repeats if dtype_name == "fp32" else args.bf16_repeats
        for size in args.sizes:
            for batch in batches:
                result = bench(args.model, size, batch, dtype_name, repeats, peaks)
                rows.append((size, batch, dtype_name, result))
                print(f"  done {args.model} {size} batch {batch} {dtype_name}", flush=True)
    for peak in peaks.values():  # again at the end: the load of a shared machine changes
        sweep(peak)

    print()
    for name, peak in peaks.items():
        print(f"matmul peak {name}: {peak.rate:7.1f} GFLOP/s ({peak.how}; best of the sweeps and of all "
              "the probes between encoder runs)")
    print()
    header = (f"{'model':6} {'size':>4} {'B':>2} {'dtype':5} {'sam GF':>7} {'need GF':>7} {'sam ms':>8} "
              f"{'fast ms':>8} {'speedup':>7} {'sam GF/s':>8} {'sam GF/s*':>9} {'fast GF/s':>9} "
              + "".join(f"{name + ' pk':>8}" for name in peaks)
              + "".join(f"{'%' + name + ' pk':>9}" for name in peaks) + f" {'max|diff|':>9}")
    print(header)
    print("-" * len(header))
    for size, batch, dtype_name, r in rows:
        fast_rate = r["need_gf"] / r["fast_s"]
        print(f"{args.model:6} {size:>4} {batch:>2} {dtype_name:5} {r['sam_gf']:7.1f} {r['need_gf']:7.1f} "
              f"{r['sam_s'] * 1e3:8.0f} {r['fast_s'] * 1e3:8.0f} {r['sam_s'] / r['fast_s']:6.2f}x "
              f"{r['need_gf'] / r['sam_s']:8.1f} {r['sam_gf'] / r['sam_s']:9.1f} {fast_rate:9.1f} "
              + "".join(f"{r['peak_' + name]:8.1f}" for name in peaks)
              + "".join(f"{100 * fast_rate / r['peak_' + name]:8.0f}%" for name in peaks)
              + f" {r['diff']:9.1e}")
    print("\nGF: GFLOP per image; ms: per image (best run); GF/s: need GF / time (sam GF/s*: sam GF / its"
          " time); fp32 pk / bf16 pk: matmul GFLOP/s, best probe taken between this row's runs;"
          " %fp32 pk / %bf16 pk: fast GF/s as a share of those.")
    save_record("encoder_speed", args.model,
                {"model": args.model, "matmul_peaks_gflops": {name: peak.rate for name, peak in peaks.items()},
                 "rows": [{"image_size": size, "batch": batch, "dtype": dtype_name, **result}
                          for size, batch, dtype_name, result in rows]})


if __name__ == "__main__":
    main()
