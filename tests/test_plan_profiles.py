"""`medsaga plan` from stored profiles: shipped, cached, measured now; and one story about memory
(plan, benchmark and a finetune report agree on one configuration)."""

from __future__ import annotations

import json
import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from medsaga.plan.measure import measure_step
from medsaga.plan.profiles import (CACHED, MEASURED, REFERENCE_CLASSES, SHIPPED, ProfileStore, architecture_digest,
                                   make_key, shipped_folder)
from medsaga.plan.run import PROFILES, default_profiled_sizes, find_profiles, plan, training_config
from tests.cli_helpers import medsaga

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"  # 3 foreground classes, as the shipped profiles
CPU = torch.device("cpu")
CHECKED = (("galore", "lean"), ("lora", "lean"), ("full", "speed"))  # the three
SHIPPED_TYPES = ("tiny", "litemedsam", "vit_b")


def plan_cli(*args: str | Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """``medsaga plan ARGS`` in a fresh interpreter with its profile cache in ``cache``."""
    return medsaga("plan", *args, env={"MEDSAGA_CACHE": str(cache)}, timeout=600)


@pytest.fixture
def store(tmp_path: Path) -> ProfileStore:
    return ProfileStore(cache=tmp_path / "cache")


# --- what is shipped ----------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", SHIPPED_TYPES)
def test_shipped_file_covers_every_plan_row_and_says_where_it_comes_from(model_type: str, store: ProfileStore) -> None:
    document = store.shipped_file(model_type)
    assert document is not None, f"no shipped profile for {model_type}"
    assert document["torch_version"] and document["medsaga_commit"] and document["device"] == "cpu"
    assert document["num_classes"] == REFERENCE_CLASSES and "classes" in document
    sizes = default_profiled_sizes(model_type)
    assert document["profiled_sizes"] == list(sizes)
    assert document["architecture"] == architecture_digest(model_type, min(sizes))  # the code it was made from
    from medsaga.methods.registry import method_names

    for method in method_names():
        for profile in PROFILES:
            config, _ = training_config(method, profile)
            assert store.find_shipped(config, model_type=model_type, sizes=sizes) is not None, (method, profile)


def test_profiles_are_package_data() -> None:
    """Listed in pyproject's package data, so a wheel carries them (not only the editable checkout)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["medsaga.plan"]
    shipped = sorted(shipped_folder().glob("*.json"))
    assert shipped and all(any(path.relative_to(shipped_folder().parent).match(p) for p in patterns)
                           for path in shipped)


# --- shipped against re-profiled (the 10 % check, on tiny: see benchmarks/plan_profiles.py --check) ---


def test_shipped_figures_equal_reprofiled_ones_within_ten_percent(store: ProfileStore) -> None:
    configs = [training_config(method, profile)[0] for method, profile in CHECKED]
    sizes = default_profiled_sizes("tiny")
    shipped = find_profiles(configs, model_type="tiny", num_classes=3, sizes=sizes, device=CPU, store=store)
    measured = find_profiles(configs, model_type="tiny", num_classes=3, sizes=sizes, device=CPU, store=store,
                             measure=True)
    for (method, profile), config in zip(CHECKED, configs):
        assert shipped[config.key()].source == SHIPPED and measured[config.key()].source == MEASURED
        for size in (256, 512):
            for batch in (1, 4):
                old = shipped[config.key()].peak_model(3).predict(size, batch).peak_bytes
                new = measured[config.key()].peak_model(3).predict(size, batch).peak_bytes
                assert old == pytest.approx(new, rel=0.10), (method, profile, size, batch)


def test_other_class_counts_add_the_decoders_bytes_per_class(store: ProfileStore) -> None:
    """Shipped at 3 classes; at 14 the decoder's bytes per class are added (classes.json)."""
    config, _ = training_config("galore", "lean")
    profile = store.find_shipped(config, model_type="tiny", sizes=default_profiled_sizes("tiny"))
    measured = measure_step(config, model_type="tiny", image_size=288, batch_size=3, num_classes=14, device=CPU)
    corrected = profile.peak_model(14).predict(288, 3)
    uncorrected = profile.peak_model().predict(288, 3)
    assert corrected.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.05)
    assert corrected.model_bytes == pytest.approx(measured.model_bytes, rel=1e-3)  # weights: exact counts
    assert abs(corrected.peak_bytes - measured.peak_bytes) < abs(uncorrected.peak_bytes - measured.peak_bytes)


# --- cache and measured now --------------------------------------------------------------------


def test_a_missing_configuration_is_profiled_once_then_cached(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    arguments = (SAMPLE, "--model", "tiny", "--image-size", "256", "--methods", "decoder", "--profile-sizes",
                 "224,288,352", "--out")
    first = plan_cli(*arguments, tmp_path / "first.json", cache=cache)
    assert first.returncode == 0, first.stderr
    assert "profiling now on cpu (not in the shipped profiles or this machine's cache): 1 configuration" \
        in first.stderr, first.stderr
    assert "decoder (cache, fp32)" in first.stderr and "done in" in first.stderr
    assert "measured now" in first.stdout
    assert len(list((cache / "plan-profiles").glob("tiny-decoder-*.json"))) == 1
    second = plan_cli(*arguments, tmp_path / "second.json", cache=cache)
    assert second.returncode == 0 and "profiling now" not in second.stderr, second.stderr
    rows = [json.loads((tmp_path / name).read_text())["rows"] for name in ("first.json", "second.json")]
    assert [row["source"] for row in rows[0]] == [MEASURED, MEASURED]  # lean and speed: one configuration
    assert [row["source"] for row in rows[1]] == [CACHED, CACHED]
    assert rows[0][0]["prediction"] == rows[1][0]["prediction"]


def test_measure_profiles_again_and_the_table_says_so(tmp_path: Path) -> None:
    result = plan_cli(SAMPLE, "--model", "tiny", "--methods", "decoder", "--measure", "--out", tmp_path / "p.json",
                      cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "profiling now on cpu (--measure)" in result.stderr
    document = json.loads((tmp_path / "p.json").read_text())
    assert {row["source"] for row in document["rows"]} == {MEASURED}
    # Without --measure the same machine now answers from its cache rather than the shipped file.
    again = plan_cli(SAMPLE, "--model", "tiny", "--methods", "decoder", "--out", tmp_path / "q.json",
                     cache=tmp_path / "cache")
    assert {row["source"] for row in json.loads((tmp_path / "q.json").read_text())["rows"]} == {CACHED}


def test_cache_key_holds_everything_a_profile_depends_on() -> None:
    config, _ = training_config("galore", "lean")
    key = make_key(config, model_type="tiny", sizes=(224, 336, 448), num_classes=3, device=CPU)
    changed = [make_key(config, model_type="vit_b", sizes=(224, 336, 448), num_classes=3, device=CPU),
               make_key(training_config("galore", "speed")[0], model_type="tiny", sizes=(224, 336, 448),
                        num_classes=3, device=CPU),
               make_key(replace(config, precision="bf16"), model_type="tiny", sizes=(224, 336, 448), num_classes=3,
                        device=CPU),
               make_key(replace(config, method_options={"layerwise": True, "rank": 4}), model_type="tiny",
                        sizes=(224, 336, 448), num_classes=3, device=CPU),
               make_key(config, model_type="tiny", sizes=(224, 288, 448), num_classes=3, device=CPU),
               make_key(config, model_type="tiny", sizes=(224, 336, 448), num_classes=14, device=CPU),
               replace(key, device="cuda:NVIDIA H100"), replace(key, torch_version="0.0"),
               replace(key, medsaga_version="0.0"), replace(key, architecture="0" * 16)]
    digests = {key.digest(), *(other.digest() for other in changed)}
    assert len(digests) == 1 + len(changed)
    assert architecture_digest("tiny", 224) != architecture_digest("vit_b", 224)
    assert architecture_digest("tiny", 224) != architecture_digest("tiny", 336)  # the position embedding


def test_a_changed_architecture_does_not_read_the_shipped_profile(tmp_path: Path) -> None:
    document = json.loads((shipped_folder() / "tiny.json").read_text())
    document["architecture"] = "0" * 16
    (tmp_path / "tiny.json").write_text(json.dumps(document))
    store = ProfileStore(shipped=tmp_path, cache=tmp_path / "cache")
    config, _ = training_config("galore", "lean")
    assert store.find_shipped(config, model_type="tiny", sizes=default_profiled_sizes("tiny")) is None
    assert ProfileStore(cache=tmp_path / "cache").find_shipped(config, model_type="tiny",
                                                               sizes=default_profiled_sizes("tiny")) is not None


# --- the card's command: from the shipped ViT-B profiles, in seconds ------------------------------


def test_vit_b_plan_answers_from_shipped_profiles_in_seconds(tmp_path: Path) -> None:
    result = plan_cli(SAMPLE, "--model", "vit_b", "--image-size", "256", "--gpu-memory", "8GiB", "--out",
                      tmp_path / "plan.json", cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "profiling now" not in result.stderr
    document = json.loads((tmp_path / "plan.json").read_text())
    assert len(document["rows"]) == 14 and {row["source"] for row in document["rows"]} == {SHIPPED}
    assert "source" in result.stdout and "shipped: profiled with 3 classes" in result.stdout
    # Nothing was profiled: the answer came from the files alone (how long that takes is a timing:
    # docs/plan.md quotes `time medsaga plan ...`, not a test).


# --- one story: plan, benchmark and finetune's report on one configuration ------------------------


def test_plan_benchmark_and_finetune_report_agree(tmp_path: Path) -> None:
    """GaLore as finetune runs it by default (lean: layer-wise, checkpointed), tiny, 256 px, batch 2:
    the plan's prediction, the benchmark entry's tensor peak and the finetune report's within 10 %."""
    from medsaga.benchmark.run import BenchmarkOptions, run_benchmark
    from medsaga.plan.own_run import plan_own_run
    from medsaga.train.finetune import finetune
    from tests.reporters import QuietBenchmarkReporter, QuietReporter
    from tests.train_helpers import tiny_options

    size, batch = 256, 2
    (row,) = [r for r in plan(["galore"], model_type="tiny", num_classes=3, image_size=size, batch_size=batch,
                              memory_bytes=None, device=CPU, store=ProfileStore(cache=tmp_path / "cache"))
              if r.profile == "lean"]
    planned = row.prediction.peak_bytes

    document = run_benchmark(BenchmarkOptions(data_dir=SAMPLE, out=tmp_path / "bench", model="tiny", image_size=size,
                                              batch_size=batch, methods="galore", steps=1, threads=1, device="cpu"),
                             QuietBenchmarkReporter())
    entry = next(e for e in document["entries"] if e["label"] == "galore")
    assert entry["memory_profile"] == "lean" and tuple(entry["lean_settings"]) == tuple(row.applied) == \
        ("layerwise", "activation_checkpointing")
    assert entry["options"]["layerwise"] is True and entry["activation_checkpointing_applied"]
    memory = entry["memory"]
    benchmarked = memory["frozen_parameters"] + memory["trainable_parameters"] + entry["tensor_peak"]["bytes"]

    run = finetune(tiny_options(tmp_path / "run", shots=1, steps=2, image_size=size, batch_size=batch,
                                method_options={}, gpu_memory="10GiB", checkpoint_every=0), QuietReporter(),
                   memory_planner=plan_own_run)
    report = run.report
    assert report["memory_profile"]["profile"] == "lean"
    assert report["memory_profile"]["applied"] == ["layerwise", "activation_checkpointing"]
    assert report["memory_plan"]["prediction"]["peak_bytes"] == pytest.approx(planned, rel=1e-6)
    finetuned = report["memory"]["frozen_parameters"] + report["memory"]["trainable_parameters"] \
        + report["memory"]["optimizer_state"] + report["tensor_peak"]["in_step_bytes"]
    assert benchmarked == pytest.approx(planned, rel=0.10)
    assert finetuned == pytest.approx(planned, rel=0.10)
    assert benchmarked == pytest.approx(finetuned, rel=0.10)
