"""Optimizer-state size of each method for a real SAM encoder, after one real step.

Run: .venv/bin/python benchmarks/optimizer_state.py [--model vit_b] [--image-size 256]

Counts the elements and bytes held in the optimizer state (Adam moments, GaLore projections) and
the trainable parameters. The state does not depend on the input size (only pos_embed and the
rel-pos tables grow with it), so a small input keeps the measurement cheap on a CPU.
"""

from __future__ import annotations

import argparse

import torch

from medsaga.losses import segmentation_loss
from medsaga.methods import count_parameters, create_method, method_names
from medsaga.model.build import build_sam
from medsaga.model.segmenter import SamSegmenter
from records import save_record


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer state."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if torch.is_tensor(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--classes", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.rand(1, 3, args.image_size, args.image_size)
    labels = torch.randint(0, args.classes + 1, (1, args.image_size, args.image_size))
    print(f"{args.model} at {args.image_size}, {args.classes} classes, fp32, one step on the CPU")
    print(f"{'method':<10}{'trainable':>14}{'total':>14}{'optimizer state':>18}")
    rows = []
    for name in method_names():
        model = SamSegmenter(build_sam(args.model, num_classes=args.classes, image_size=args.image_size))
        method = create_method(name)
        method.prepare(model)
        optimizer = method.build_optimizer(model, method.default_lr, method.default_weight_decay)
        segmentation_loss(model(images), labels).backward()
        optimizer.step()
        trainable, total = count_parameters(model)
        print(f"{name:<10}{trainable:>14,}{total:>14,}{state_bytes(optimizer) / 2**20:>15.1f} MiB")
        rows.append({"method": name, "trainable": trainable, "total": total,
                     "optimizer_state_bytes": state_bytes(optimizer)})
    save_record("optimizer_state", f"{args.model}-{args.image_size}",
                {"model": args.model, "image_size": args.image_size, "classes": args.classes, "rows": rows})


if __name__ == "__main__":
    main()
