#!/usr/bin/env bash
# The memory targets at the size SAMed trains at: ViT-B, 512 px, batch 4, each entry in a
# fresh process. MedSAGa as finetune runs it by default (galore: GaLore, layer-wise updates,
# activation checkpointing: every encoder weight still trains) against SAMed's LoRA as SAMed runs
# it (lora@speed: no checkpointing), LoRA with the same savings (lora: finetune's lean default),
# classic full fine-tuning (full@speed) and the adapter.
# SAM's weights are random: memory does not depend on their values. Writes OUT/benchmark.md/.json/.png
# and the committed record benchmarks/results/memory_targets/vit_b-512.json.
#
# Run from the repository root: bash benchmarks/memory_targets.sh [DATA_DIR] [OUT] [more options]
# About 11 minutes on a 2-core CPU.
set -euo pipefail
DATA=${1:-../shared/data/malf-brain-t1}
OUT=${2:-runs/benchmark-vit_b-512}
shift $(( $# < 2 ? $# : 2 ))
MEDSAGA=${MEDSAGA:-.venv/bin/medsaga}
$MEDSAGA benchmark "$DATA" --model vit_b --image-size 512 --batch-size 4 --steps 1 \
    --methods lora@speed,galore,full@speed,adapter,lora \
    --out "$OUT" --force "$@"
cat "$OUT/benchmark.md"
# The committed record behind the table in docs/performance.md (with commit, torch and CPU).
PYTHON=${PYTHON:-.venv/bin/python}
$PYTHON benchmarks/records.py keep "$OUT/benchmark.json" benchmarks/results/memory_targets/vit_b-512.json \
    --command-line "bash benchmarks/memory_targets.sh $DATA $OUT $*"
