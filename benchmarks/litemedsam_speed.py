"""LiteMedSAM's image encoder on this machine: the published code against medsaga's TinyViT.

For each batch size it times (best of ``--repeats`` after a warm-up, fp32, ``torch.inference_mode``,
the installed LiteMedSAM weights) the encoder of the LiteMedSAM package's own code (its vendored
TinyViT, loaded as :mod:`tests.litemedsam_reference` does) and medsaga's, prints seconds per slice,
slices per second, the encoder's FLOPs per slice (``torch.utils.flop_counter``), the achieved
GFLOP/s and its share of the fp32 matmul peak probed in the same run, and the largest output
difference. Then it says where medsaga's time goes: per stage (forward hooks) and per kind of
operation (the profiler's self time, grouped).

glibc's malloc matters on a CPU: ``medsaga finetune`` fixes its mmap threshold (RSS honesty,
:mod:`medsaga.train.allocator`), ``medsaga predict`` leaves glibc's own. ``--tuned-malloc``
measures as finetune runs (run the script twice to see both).

    .venv/bin/python benchmarks/litemedsam_speed.py                      # batches 1, 4, 16
    .venv/bin/python benchmarks/litemedsam_speed.py --batches 4 --tuned-malloc
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from records import save_record  # noqa: E402

# Kinds of operation for "where the time goes" (profiler op names, substring match, first wins).
KINDS = (("attention", ("scaled_dot_product", "_softmax", "bmm")),
         ("linear (matmul)", ("addmm", "aten::mm", "linear")),
         ("convolution", ("convolution",)),
         ("GELU", ("gelu",)),
         ("norms", ("layer_norm", "batch_norm")),
         ("copies and layout", ("copy_", "cat", "pad", "contiguous", "clone")),
         ("other elementwise", ("add", "mul", "sub", "div", "fill_", "where", "rsqrt")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--tuned-malloc", action="store_true", help="glibc malloc as medsaga finetune sets it")
    args = parser.parse_args(argv)
    if args.tuned_malloc:
        from medsaga.train.allocator import tune_malloc

        tune_malloc()
    import torch

    from medsaga.benchmark.flops import count_flops, measure_matmul_peaks
    from medsaga.model.checkpoint import read_state_dict
    from medsaga.model.packaged_weights import litemedsam_checkpoint
    from medsaga.model.tiny_vit import TinyViT
    from tests.litemedsam_reference import reference_encoder, reference_tiny_vit_module

    state, _ = read_state_dict(litemedsam_checkpoint())
    encoder_state = {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}
    ours = TinyViT(img_size=args.image_size)
    ours.load_state_dict(encoder_state)
    ours.eval()
    module = reference_tiny_vit_module()
    reference = None
    if module is not None and args.image_size == 256:  # the published code hard-codes the 64 x 64 grid
        reference = reference_encoder(module)
        reference.load_state_dict(encoder_state)
        reference.eval()
    peaks = measure_matmul_peaks("cpu")
    with torch.inference_mode():
        flops = count_flops(ours, torch.rand(1, 3, args.image_size, args.image_size))
    print(f"LiteMedSAM image encoder, {args.image_size} px, fp32, {torch.get_num_threads()} threads, malloc "
          f"{'tuned as finetune' if args.tuned_malloc else 'glibc default (as predict)'}; "
          f"{flops / 1e9:.1f} GFLOP per slice; fp32 matmul peak {peaks['fp32']:.0f} GFLOP/s\n")
    rows: list[dict[str, object]] = []
    print("| batch | code | s/slice | slices/s | GFLOP/s | % of fp32 peak | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batches:
        images = torch.rand(batch, 3, args.image_size, args.image_size, generator=torch.Generator().manual_seed(batch))
        results = {}
        for name, encoder in (("published", reference), ("medsaga", ours)):
            if encoder is None:
                continue
            with torch.inference_mode():
                output = encoder(images)
                best = float("inf")
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    encoder(images)
                    best = min(best, time.perf_counter() - started)
            results[name] = output
            rate = flops * batch / best / 1e9
            compared = name != "published" and "published" in results  # the published code is the reference
            difference = (output - results["published"]).abs().max().item() if compared else None
            print(f"| {batch} | {name} | {best / batch:.3f} | {batch / best:.2f} | {rate:.1f} | "
                  f"{100 * rate / peaks['fp32']:.0f} % | {'–' if difference is None else f'{difference:.1e}'} |",
                  flush=True)
            rows.append({"batch": batch, "code": name, "seconds_per_slice": best / batch, "gflops_per_second": rate,
                         "max_abs_difference": difference})
    save_record("litemedsam_speed", f"{args.image_size}px" + ("-tuned-malloc" if args.tuned_malloc else ""),
                {"image_size": args.image_size, "gflop_per_slice": flops / 1e9, "fp32_matmul_peak_gflops": peaks["fp32"],
                 "malloc": "tuned as finetune" if args.tuned_malloc else "glibc default", "rows": rows})
    _where_the_time_goes(ours, torch.rand(4, 3, args.image_size, args.image_size))
    return 0


def _where_the_time_goes(encoder, images) -> None:  # type: ignore[no-untyped-def]
    import torch
    from torch.profiler import ProfilerActivity, profile

    stages = [("patch embedding", encoder.patch_embed)] + [
        (f"stage {index} ({'MBConv' if index == 0 else 'attention'}, {len(stage.blocks)} blocks"
         + (", merging)" if stage.downsample is not None else ")"), stage) for index, stage in enumerate(encoder.layers)
    ] + [("neck", encoder.neck)]
    seconds: dict[str, float] = defaultdict(float)
    measured: dict[str, float] = {}
    handles = []
    for name, module in stages:
        handles.append(module.register_forward_pre_hook(
            lambda *_, n=name: seconds.__setitem__(n + "@", time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda *_, n=name: seconds.__setitem__(n, seconds[n] + time.perf_counter() - seconds[n + "@"])))
    with torch.inference_mode():
        encoder(images)
        for key in list(seconds):
            seconds[key] = 0.0
        encoder(images)
        measured = {key: value for key, value in seconds.items() if not key.endswith("@")}
        for handle in handles:
            handle.remove()
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            encoder(images)
    seconds = defaultdict(float, measured)
    total = sum(measured.values())
    print(f"\nWhere the time goes (batch {len(images)}, {total / len(images):.3f} s per slice):\n")
    print("| part | s/slice | share |")
    print("|---|---|---|")
    for name, _ in stages:
        print(f"| {name} | {seconds[name] / len(images):.3f} | {100 * seconds[name] / total:.0f} % |")
    kinds: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        kind = next((label for label, names in KINDS if any(n in event.key for n in names)), "rest")
        kinds[kind] += event.self_cpu_time_total
    everything = sum(kinds.values())
    print("\n| kind of operation | share of CPU time |")
    print("|---|---|")
    for kind, value in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"| {kind} | {100 * value / everything:.0f} % |")


if __name__ == "__main__":
    raise SystemExit(main())
