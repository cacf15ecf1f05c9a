"""``medsaga select``: embed every scan of a cohort, pick the K to label, write the list and the map.

What it writes in ``OUT`` (each file atomically):

- ``selection.json``: the picks in order with their distances, every scan's facts and nearest
  pick, the settings; ``medsaga finetune --cases OUT/selection.json`` trains on the picks and
  records where they came from;
- ``cases.txt``: the picked case ids, comma-separated (for ``--cases`` in scripts);
- ``cohort_map.png``: the cohort on its first two principal components, picks marked.

Every cheap check (folder and layout, K, rule, model weights, output folder) runs before the
first scan is read. A scan that cannot be read stops the command with one line naming it; the
descriptors computed before it stay in the cache, so the rerun only reads the rest.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medsaga import __version__
from medsaga.errors import InputError
from medsaga.select.pick import DEFAULT_RULE

SELECTION_FILE = "selection.json"
CASES_FILE = "cases.txt"
MAP_FILE = "cohort_map.png"


def default_cache_dir() -> Path:
    """``$MEDSAGA_CACHE/descriptors``, else ``$XDG_CACHE_HOME/medsaga/descriptors``, else ``~/.cache/...``."""
    if os.environ.get("MEDSAGA_CACHE"):
        return Path(os.environ["MEDSAGA_CACHE"]) / "descriptors"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "medsaga" / "descriptors"


@dataclass(frozen=True)
class SelectOptions:
    """Everything ``medsaga select`` takes (see ``medsaga select --help``)."""

    folder: Path
    shots: int
    out: Path
    model: str | None = "litemedsam"
    checkpoint: Path | None = None
    random_init: bool = False
    image_size: int | None = None
    slices: int = 8
    rule: str = DEFAULT_RULE
    plane: str = "axial"
    intensity: str | None = None
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    device: str = "auto"
    seed: int = 0
    force: bool = False


@dataclass(frozen=True)
class Selection:
    """What ``select`` found: the document written to ``selection.json``, and its folder."""

    document: dict[str, Any]
    out: Path

    @property
    def cases(self) -> list[str]:
        return list(self.document["cases"])


# progress(done, total, case_id, from_cache) after each scan; (0, total, "", False) before the first.
Progress = Callable[[int, int, str, bool], None]


def select(options: SelectOptions, progress: Progress | None = None,
           warn: Callable[[str], None] | None = None) -> Selection:
    """Run the selection (module docstring); ``warn`` hears each file the dataset dropped."""
    from medsaga.data.dataset import discover_dataset
    from medsaga.data.slicing import check_plane
    from medsaga.io import read_volume
    from medsaga.io.paths import check_owned_folder, ensure_writable_folder
    from medsaga.model.build import check_image_size
    from medsaga.select.embed import scan_facts
    from medsaga.select.pick import RULES, pairwise_distances, pick

    dataset = discover_dataset(options.folder)
    for warning in dataset.warnings if warn is not None else ():
        warn(warning)
    scans = dataset.cases
    if isinstance(options.shots, bool) or options.shots < 1:
        raise InputError(f"--shots must be at least 1, got {options.shots}")
    if options.shots > len(scans):
        raise InputError(f"--shots {options.shots} is more than the {len(scans)} scans found", dataset.root)
    if options.rule not in RULES:
        raise InputError(f"unknown --rule {options.rule!r}; choose one of: {', '.join(RULES)}")
    if options.image_size is not None:
        check_image_size(options.image_size, option="--image-size")
    if options.slices < 1:
        raise InputError(f"--slices must be at least 1, got {options.slices}")
    check_plane(options.plane)
    check_owned_folder(options.out, force=options.force, kind="selection",
                       inputs={"the input folder": dataset.root, "the --checkpoint": options.checkpoint,
                               "the --cache-dir": options.cache_dir})
    if options.cache_dir is not None:  # created now: the descriptors are written scan by scan
        ensure_writable_folder(options.cache_dir, "--cache-dir")
    embedder, model_info = _embedder(options, dataset)

    started = time.perf_counter()
    descriptors, facts, cached = [], [], 0
    if progress is not None:
        progress(0, len(scans), "", False)
    for done, scan in enumerate(scans, start=1):
        key, hit = embedder.cached(scan.images)
        from_cache = hit is not None
        if hit is None:
            volumes = [read_volume(path) for path in scan.images]
            hit = embedder.describe(volumes), scan_facts(volumes, options.plane)
            embedder.store(key, *hit)
        cached += from_cache
        descriptors.append(hit[0])
        facts.append(hit[1])
        if progress is not None:
            progress(done, len(scans), scan.case_id, from_cache)
    matrix = np.stack(descriptors)  # (N, S * 256)
    distances = pairwise_distances(matrix)
    picks = pick(distances, options.shots, options.rule)
    case_ids = [scan.case_id for scan in scans]
    document = _document(options, dataset, model_info, case_ids, facts, distances, picks)
    document["embedding"] = {**asdict(embedder.settings), "descriptor_length": int(matrix.shape[1])}
    document["cache"] = {"folder": str(options.cache_dir) if options.cache_dir else None, "hits": cached}
    document["seconds"] = round(time.perf_counter() - started, 2)
    _write_outputs(options, document, matrix, case_ids, picks)
    return Selection(document, options.out)


def _embedder(options: SelectOptions, dataset: Any):
    """The frozen encoder as a :class:`ScanEmbedder`, and what identifies its weights."""
    import torch

    from medsaga.model.fast_attention import speed_up_encoder
    from medsaga.model.load import load_segmenter
    from medsaga.model.weights import file_digests
    from medsaga.select.embed import EmbeddingSettings, ScanEmbedder
    from medsaga.train.data import default_presets
    from medsaga.device import resolve_device

    if options.model is None and options.checkpoint is None:
        raise InputError("give --model (litemedsam: the installed weights) or --checkpoint PATH")
    device = resolve_device(options.device)
    presets = default_presets(dataset, options.intensity)
    mode = "repeat" if len(dataset.channel_names) == 1 else "modalities"
    if options.random_init:
        torch.manual_seed(options.seed)  # the random weights are the seed's
    loaded = load_segmenter(options.model, options.checkpoint, num_classes=1, image_size=options.image_size,
                            random_init=options.random_init, require_weights=True)
    if loaded.checkpoint is None:
        weights = f"random-seed-{options.seed}"
        info: dict[str, Any] = {"type": loaded.model_type, "weights": weights}
    else:
        weights = file_digests(loaded.checkpoint).sha256
        info = {"type": loaded.model_type, "weights": weights, "checkpoint": str(Path(loaded.checkpoint).resolve())}
    segmenter = loaded.model.to(device).eval()
    speed_up_encoder(segmenter.image_encoder)
    settings = EmbeddingSettings(model=loaded.model_type, weights=weights, image_size=loaded.image_size,
                                 slices=options.slices, plane=options.plane, presets=tuple(presets), mode=mode)
    return ScanEmbedder(segmenter.encode, settings, options.cache_dir, device), info


def _document(options: SelectOptions, dataset: Any, model_info: dict[str, Any], case_ids: list[str],
              facts: list[Any], distances: np.ndarray, picks: Any) -> dict[str, Any]:
    """selection.json's picks, scans and summary figures (the caller adds settings and timing)."""
    order = [int(i) for i in picks.indices]
    mean_to_others = distances.sum(axis=1) / max(len(case_ids) - 1, 1)
    pick_rows = []
    for rank, index in enumerate(order):
        earlier = order[:rank]
        pick_rows.append({
            "rank": rank + 1, "case_id": case_ids[index],
            "distance_to_earlier_picks": float(distances[index, earlier].min()) if earlier else None,
            "mean_distance_to_others": float(mean_to_others[index]),
            "stands_for": int((picks.nearest_pick == rank).sum()),
            "coverage_radius_after": float(picks.radius[rank]),
            "mean_distance_to_nearest_pick_after": float(picks.cost[rank]),
        })
    scan_rows = []
    for index, (case_id, fact) in enumerate(zip(case_ids, facts)):
        nearest = int(picks.nearest_pick[index])
        scan_rows.append({"case_id": case_id, "files": [str(p) for p in dataset.cases[index].images],
                          "labelled": dataset.cases[index].label is not None, **asdict(fact),
                          "nearest_pick": case_ids[order[nearest]],
                          "distance_to_nearest_pick": float(distances[index, order[nearest]])})
    return {
        "medsaga_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "folder": str(dataset.root.resolve()), "layout": dataset.layout, "scans": len(case_ids),
        "shots": options.shots, "rule": options.rule,
        "cases": [case_ids[i] for i in order],
        "picks": pick_rows,
        "coverage_radius": float(picks.radius[-1]),
        "mean_distance_to_nearest_pick": float(picks.cost[-1]),
        "median_pairwise_distance": float(np.median(distances[np.triu_indices(len(case_ids), 1)]))
        if len(case_ids) > 1 else 0.0,
        "model": model_info,
        "scan_table": scan_rows,
        "map": MAP_FILE,
    }


def _write_outputs(options: SelectOptions, document: dict[str, Any], descriptors: np.ndarray, case_ids: list[str],
                   picks: Any) -> None:
    from medsaga.io.atomic import atomic_output
    from medsaga.io.paths import new_owned_folder
    from medsaga.select.cohort_map import principal_plane, render_cohort_map

    coordinates, explained = principal_plane(descriptors)
    document["map_explained_variance"] = [round(float(v), 4) for v in explained]
    out = options.out
    picture = render_cohort_map(coordinates, explained, case_ids, [int(i) for i in picks.indices], picks.nearest_pick,
                              f"medsaga select: {options.shots} of {len(case_ids)} scans ({options.rule})")
    # A previous selection replaced with --force is deleted only once all three files are written,
    # and put back if any write fails.
    with new_owned_folder(out, "selection"):
        with atomic_output(out / MAP_FILE) as temporary:
            temporary.write_bytes(picture)
        with atomic_output(out / CASES_FILE) as temporary:
            temporary.write_text(",".join(document["cases"]) + "\n", encoding="utf-8")
        with atomic_output(out / SELECTION_FILE) as temporary:
            temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
