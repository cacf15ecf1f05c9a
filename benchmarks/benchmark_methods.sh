#!/usr/bin/env bash
# The performance table (docs/performance.md): every tuning method on ViT-B at 256 px, batch 2, each in a fresh
# process, as finetune runs it by default (the lean profile: activation checkpointing where the encoder
# trains, layer-wise GaLore, the embedding cache where it is frozen) and with --speed (@speed: none of
# those savings but the cache), plus the embedding cache switched off (@nocache) and SAM's own
# padded-window attention (@padded).
# SAM's weights are random: memory and speed do not depend on their values, so no checkpoint is needed.
# Writes OUT/benchmark.md (the table as quoted), benchmark.json and benchmark.png, and the committed
# record benchmarks/results/benchmark_methods/vit_b-256.json.
#
# Run from the repository root: bash benchmarks/benchmark_methods.sh [DATA_DIR] [OUT] [more options]
#   e.g. bash benchmarks/benchmark_methods.sh ../shared/data/malf-brain-t1 runs/benchmark --device cuda
# About 15 minutes on a 2-core CPU (SAM-PARSER's SVD of the ViT-B weights alone takes 1-2 minutes per entry).
set -euo pipefail
DATA=${1:-../shared/data/malf-brain-t1}
OUT=${2:-runs/benchmark-vit_b-256}
shift $(( $# < 2 ? $# : 2 ))
MEDSAGA=${MEDSAGA:-.venv/bin/medsaga}
$MEDSAGA benchmark "$DATA" --model vit_b --image-size 256 --batch-size 2 --steps 3 \
    --methods all,all@speed,decoder@nocache,adapter@nocache,lora@padded \
    --out "$OUT" --force "$@"
cat "$OUT/benchmark.md"
# The committed record behind the table in docs/performance.md (with commit, torch and CPU).
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON benchmarks/records.py keep "$OUT/benchmark.json" benchmarks/results/benchmark_methods/vit_b-256.json \
    --command-line "bash benchmarks/benchmark_methods.sh $DATA $OUT $*"
