"""GaLore's projection refresh: the rank-r basis of a gradient by full SVD against randomized SVD.

The default shape is a ViT-B MLP weight's gradient (768 x 3072), rank 8: the refresh the ``galore``
method does every ``update_proj_gap`` steps for each block weight. Prints the best of ``--repeats``
timings of each, their ratio, and what measured them (torch version, threads, commit), and saves them
as a record under benchmarks/results/randomized_svd_speed/ (benchmarks/records.py); docs/methods.md
quotes these figures.

    .venv/bin/python benchmarks/randomized_svd_speed.py
    .venv/bin/python benchmarks/randomized_svd_speed.py --rows 1024 --cols 4096 --rank 4 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch

from medsaga.optim import top_singular_basis
from records import commit, save_record


def best_of(grad: torch.Tensor, rank: int, method: str, repeats: int) -> float:
    """The shortest of ``repeats`` timings (seconds) of one rank-``rank`` left basis by ``method``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        top_singular_basis(grad, rank, "left", method=method)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=768, help="the gradient's rows (default: ViT-B's width)")
    parser.add_argument("--cols", type=int, default=3072, help="the gradient's columns (default: ViT-B's MLP width)")
    parser.add_argument("--rank", type=int, default=8, help="the basis' rank (default: the galore method's)")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each method; the best is kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random gradient")
    args = parser.parse_args(argv)

    grad = torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(args.seed))
    full = best_of(grad, args.rank, "full", args.repeats)
    randomized = best_of(grad, args.rank, "randomized", args.repeats)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, commit {commit()}")
    print(f"{args.rows}x{args.cols} rank-{args.rank} basis, best of {args.repeats}: full SVD {full * 1e3:.1f} ms, "
          f"randomized {randomized * 1e3:.1f} ms ({full / randomized:.0f}x)")
    save_record("randomized_svd_speed", f"{args.rows}x{args.cols}-r{args.rank}",
                {"rows": args.rows, "cols": args.cols, "rank": args.rank, "repeats": args.repeats,
                 "seed": args.seed, "full_seconds": full, "randomized_seconds": randomized})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
