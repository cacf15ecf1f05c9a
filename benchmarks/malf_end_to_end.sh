#!/usr/bin/env bash
# Few-shot end to end on real brain MR: fine-tune the tiny SAM on 2 MALF cases, predict the other
# 6, check every output's affine against its input with nibabel, and evaluate Dice/HD95/NSD.
# Run from the repository root: bash benchmarks/malf_end_to_end.sh [METHOD] [EPOCHS]
set -euo pipefail
METHOD=${1:-galore}
EPOCHS=${2:-10}
DATA=../shared/data/malf-brain-t1
RUN=runs/malf-$METHOD
BIN=.venv/bin
$BIN/medsaga finetune $DATA --shots 2 --model tiny --image-size 256 --epochs "$EPOCHS" --method "$METHOD" \
    --out "$RUN" --force
TRAIN=$($BIN/python -c "import json; print(' '.join(json.load(open('$RUN/config.json'))['dataset']['train_cases']))")
INPUTS=()
for image in "$DATA"/imagesTr/*_0000.nii.gz; do
    case_id=$(basename "$image" _0000.nii.gz)
    [[ " $TRAIN " == *" $case_id "* ]] || INPUTS+=("$image")
done
$BIN/medsaga predict "$RUN" "${INPUTS[@]}" --out "$RUN/predictions" --force
$BIN/python - "$RUN/predictions" "${INPUTS[@]}" <<'PY'
import sys
from pathlib import Path
import nibabel as nib
import numpy as np
out = Path(sys.argv[1])
for image in sys.argv[2:]:
    case_id = Path(image).name[: -len("_0000.nii.gz")]
    a, b = nib.load(image), nib.load(out / f"{case_id}.nii.gz")
    assert np.array_equal(a.affine, b.affine) and a.shape == b.shape, case_id
    print(f"{case_id}: affine and shape identical to the input (nibabel)")
PY
$BIN/medsaga evaluate "$RUN/predictions" "$DATA" --labels "$RUN" --out "$RUN/evaluation" --force
