#!/usr/bin/env bash
# `make docker-test`: the image on this machine as a hospital runs it — no network at all, a
# non-root user, sample_data/ mounted read-only, a run folder mounted writable — then checks on the
# host that the label maps belong to that user and overlay their inputs exactly.
# The README's Docker section shows these same commands.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-medsaga}
RUNS=${RUNS:-$PWD/runs/docker-test}

# The host user; on a root shell (CI machines) a non-root uid instead, as the image's own user.
user="$(id -u):$(id -g)"
if [ "$(id -u)" = 0 ]; then user=1000:1000; fi
rm -rf "$RUNS" && mkdir -p "$RUNS"
if [ "$(id -u)" = 0 ]; then chown "$user" "$RUNS"; fi

medsaga() {
  docker run --rm --network none --user "$user" \
    -v "$PWD/sample_data:/data:ro" -v "$RUNS:/runs" "$IMAGE" "$@"
}

medsaga --help
medsaga weights
medsaga finetune /data --cases phantom_001,phantom_002,phantom_003 --model litemedsam --method decoder \
  --image-size 128 --steps 150 --out /runs/demo
medsaga predict /runs/demo /data/imagesTr/phantom_006_0000.nii.gz /data/imagesTr/phantom_007_0000.nii.gz \
  --out /runs/demo/predictions
medsaga evaluate /runs/demo/predictions /data --labels /runs/demo --out /runs/demo/evaluation

# On the host: every output belongs to the user the container ran as, and each label map has its
# input's shape and affine (read by nibabel inside the image: the host needs no Python packages).
for file in "$RUNS"/demo/predictions/*.nii.gz; do
  owner=$(stat -c %u:%g "$file")
  [ "$owner" = "$user" ] || { echo "docker-test: $file belongs to $owner, not $user" >&2; exit 1; }
done
docker run --rm --network none --user "$user" -v "$PWD/sample_data:/data:ro" -v "$RUNS:/runs" \
  --entrypoint python "$IMAGE" -c '
import sys, nibabel as nib, numpy as np
for case in ("phantom_006", "phantom_007"):
    image = nib.load(f"/data/imagesTr/{case}_0000.nii.gz")
    label = nib.load(f"/runs/demo/predictions/{case}.nii.gz")
    if label.shape != image.shape or not np.array_equal(label.affine, image.affine):
        sys.exit(f"docker-test: {case} is not on its input grid")
print("docker-test: label maps on their input grids, owned by the user who ran the container")
'
du -sh "$RUNS"
docker image ls "$IMAGE" --format 'docker-test: image {{.Repository}}:{{.Tag}} is {{.Size}}'
