#!/usr/bin/env bash
# `make docker-test`: the image on this machine as a hospital runs it — no network at all, a
# non-root user, sample_data/ mounted read-only, a run folder mounted writable — then checks on the
# host that the label maps belong to that user and overlay their inputs exactly.
# docs/docker.md shows these same commands.
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
# The report pages (issue 30), written offline above: self-contained (every picture a data: URI
# that decodes, no link out of the page, a CSP that forbids any fetch), checked inside the image;
# and where the host has Chromium and root, opened in it with no network at all (a fresh network
# namespace): every picture must load.
docker run --rm --network none --user "$user" -v "$RUNS:/runs:ro" --entrypoint python "$IMAGE" -c '
import base64, io, re, sys
from matplotlib.image import imread
for page in ("/runs/demo/report.html", "/runs/demo/evaluation/report.html"):
    text = open(page, encoding="utf-8").read()
    sources = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", text)
    outside = re.findall(r"\b(?:src|href)=\"(?!data:|#)([^\"]*)\"", text)
    if not sources or outside or f"default-src {chr(39)}none{chr(39)}" not in text:
        sys.exit(f"docker-test: {page} is not self-contained ({len(sources)} pictures, links out: {outside[:3]})")
    for source in sources:
        if imread(io.BytesIO(base64.b64decode(source.split(",", 1)[1])), format="png").size == 0:
            sys.exit(f"docker-test: {page} holds an empty picture")
    print(f"docker-test: {page}: {len(sources)} pictures inlined, nothing to fetch")
'
if command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  profile=$(mktemp -d)
  dom=$(unshare --net chromium --headless --no-sandbox --disable-gpu --user-data-dir="$profile" \
    --virtual-time-budget=5000 --dump-dom "file://$RUNS/demo/evaluation/report.html" 2>/dev/null || true)
  rm -rf "$profile"
  images=$(grep -o 'data-images="[0-9]*"' <<<"$dom" | head -1 | tr -dc 0-9 || true)
  loaded=$(grep -o 'data-images-loaded="[0-9]*"' <<<"$dom" | head -1 | tr -dc 0-9 || true)
  if [ -z "$images" ] || [ "$images" != "$loaded" ]; then
    echo "docker-test: report.html in Chromium without network: ${loaded:-no} of ${images:-?} pictures loaded" >&2
    exit 1
  fi
  echo "docker-test: report.html opened in Chromium with no network: all $images pictures loaded"
else
  echo "docker-test: no Chromium on the host (or not root): report.html was checked inside the image only"
fi
du -sh "$RUNS"
docker image ls "$IMAGE" --format 'docker-test: image {{.Repository}}:{{.Tag}} is {{.Size}}'
