"""`medsaga benchmark`: the --methods syntax, ratios to full, clean worker processes, the outputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image  # matplotlib's own dependency

from medsaga.benchmark.report import add_ratios, markdown_table
from medsaga.benchmark.run import CHART_FILE, JSON_FILE, MARKDOWN_FILE, BenchmarkOptions, run_benchmark
from medsaga.benchmark.slices import load_slices, save_slices, thin_stacks
from medsaga.benchmark.variants import Variant, parse_variants, with_reference
from medsaga.benchmark.worker import RECORD_FIELDS
from medsaga.errors import InputError
from medsaga.methods import method_names
from medsaga.train.data import CaseStack
from tests.cli_helpers import assert_one_line_error, medsaga
from tests.data_paths import ROOT, SAMPLE
from tests.reporters import QuietBenchmarkReporter

NAMES = ["galore", "adapter", "parser", "lora", "conv-lora", "decoder", "full"]


# --- the --methods syntax -------------------------------------------------------------------------


def test_variant_syntax_from_the_issue() -> None:
    variants = parse_variants("galore,galore:layerwise=true,full,lora,adapter,decoder", NAMES)
    assert [v.label for v in variants] == ["galore", "galore:layerwise=true", "full", "lora", "adapter", "decoder"]
    assert variants[1] == Variant("galore", (("layerwise", True),))
    assert variants[1].options_dict() == {"layerwise": True}


def test_variant_flags_options_and_lists() -> None:
    full, ckpt, both = parse_variants("full,full@ckpt,full@bf16@ckpt", NAMES)
    assert (full.precision, full.checkpointing) == ("fp32", False)
    assert (ckpt.precision, ckpt.checkpointing) == ("fp32", True)
    assert (both.precision, both.checkpointing, both.label) == ("bf16", True, "full@bf16@ckpt")
    lora, decoder = parse_variants("lora:rank=8,alpha=16.5,decoder", NAMES)
    assert lora.options == (("rank", 8), ("alpha", 16.5)) and decoder == Variant("decoder")
    (targets,) = parse_variants("lora:targets=q+k+v", NAMES)
    assert targets.options_dict() == {"targets": ("q", "k", "v")} and targets.label == "lora:targets=q+k+v"
    (galore,) = parse_variants("galore@ckpt:layerwise=true,update-proj-gap=50", NAMES)
    assert galore.label == "galore@ckpt:layerwise=true,update_proj_gap=50"
    # A label is itself valid --methods text that reads back to the same variant.
    for variant in (lora, targets, galore, both):
        assert parse_variants(variant.label, NAMES) == [variant]


def test_cache_flag() -> None:
    decoder, adapter = parse_variants("decoder@cache,adapter@bf16@cache:width=32", NAMES)
    assert decoder == Variant("decoder", cache=True) and decoder.label == "decoder@cache"
    assert adapter.cache and adapter.bf16 and adapter.label == "adapter@bf16@cache:width=32"
    assert parse_variants(adapter.label, NAMES) == [adapter]
    assert [v.label for v in parse_variants("decoder,decoder@cache", NAMES)] == ["decoder", "decoder@cache"]


def test_padded_flag_trains_with_sams_attention() -> None:
    plain, padded = parse_variants("lora,lora@ckpt@padded:rank=8", NAMES)
    assert not plain.padded and padded.padded and padded.checkpointing
    assert padded.label == "lora@ckpt@padded:rank=8" and parse_variants(padded.label, NAMES) == [padded]


def test_all_global_flags_duplicates_and_the_reference() -> None:
    assert [v.method for v in parse_variants("all", NAMES)] == NAMES
    assert [v.label for v in parse_variants("all,full,galore:rank=4", NAMES)] == [*NAMES, "galore:rank=4"]
    flagged = parse_variants("lora,decoder@ckpt", NAMES, bf16=True, checkpointing=True)
    assert [v.label for v in flagged] == ["lora@bf16@ckpt", "decoder@bf16@ckpt"]
    variants, reference, added = with_reference(parse_variants("lora,decoder", NAMES))
    assert added and reference == Variant("full") and variants[-1] == reference
    variants, reference, added = with_reference(parse_variants("full@ckpt,full", NAMES))
    assert not added and len(variants) == 2
    _, reference, added = with_reference(parse_variants("full", NAMES), bf16=True)
    assert added and reference.label == "full@bf16"  # the reference runs with the global flags


def test_entries_run_as_finetune_runs_them_and_speed_as_finetune_speed() -> None:
    """One story about memory: an entry's configuration is finetune's default (the lean profile,
    resolved by the same function); @speed is finetune --speed; and both are plan's two rows."""
    from medsaga.benchmark.run import entry_config
    from medsaga.plan.run import config_of
    from medsaga.train.memory_profile import resolve_memory_profile

    variants = parse_variants("all,all@speed", NAMES)
    assert [v.label for v in variants] == [*NAMES, *(f"{name}@speed" for name in NAMES)]
    for variant in variants:
        config = entry_config(variant)
        profile = resolve_memory_profile(variant.method, {}, speed=variant.speed, activation_checkpointing=None,
                                         grad_accum=1)
        planned = config_of(variant.method, profile, precision="fp32")
        assert (config.profile, config.options, config.checkpointing, config.applied) == \
            (profile.name, profile.method_options, profile.activation_checkpointing, profile.applied)
        assert (config.options, config.checkpointing, config.cache) == \
            (planned.method_options, planned.activation_checkpointing, planned.cache), variant.label
    galore, galore_speed = (entry_config(v) for v in parse_variants("galore,galore@speed", NAMES))
    assert galore.options == {"layerwise": True} and galore.checkpointing and galore.profile == "lean"
    assert galore_speed.options == {} and not galore_speed.checkpointing and galore_speed.profile == "speed"
    decoder, uncached = (entry_config(v) for v in parse_variants("decoder,decoder@nocache", NAMES))
    assert decoder.cache and not uncached.cache
    forced = entry_config(parse_variants("lora@speed@ckpt", NAMES)[0])
    assert forced.checkpointing and forced.profile == "speed"
    own = entry_config(parse_variants("galore:layerwise=false", NAMES)[0])  # the entry's own option wins
    assert own.options == {"layerwise": False} and own.checkpointing
    speed = parse_variants("galore@speed@bf16:rank=4", NAMES)[0]
    assert speed.label == "galore@speed@bf16:rank=4" and parse_variants(speed.label, NAMES) == [speed]
    with pytest.raises(InputError, match="contradict"):
        parse_variants("decoder@cache@nocache", NAMES)


@pytest.mark.parametrize("text, fragment", [
    ("galore,sam", "unknown method 'sam'"),
    ("full@fp16", "unknown flag @fp16"),
    ("galore,rank=4", "follows no method"),
    ("galore,,full", "empty entry"),
    ("galore:layerwise=true@ckpt", "flags go right after the method name"),
    ("all:rank=4", "'all' takes flags"),
    ("lora:rank", "not KEY=VALUE"),
    ("", "empty"),
])
def test_variant_syntax_errors(text: str, fragment: str) -> None:
    with pytest.raises(InputError, match=fragment):
        parse_variants(text, NAMES)


# --- ratios ----------------------------------------------------------------------------------------


def _entry(label: str, peak: int, total: int, train: float, infer: float, status: str = "ok") -> dict:
    return {"label": label, "status": status, "peak_memory": {"peak_above_baseline_bytes": peak},
            "tensor_peak": {"bytes": peak // 2},
            "memory": {"sum_of_peaks": total}, "train_slices_per_second": train, "inference_slices_per_second": infer}


def test_ratios_to_full() -> None:
    entries = [_entry("lora", 300, 500, 3.0, 8.0), _entry("full", 1200, 2000, 2.0, 10.0),
               _entry("galore", 0, 0, 0.0, 0.0, status="failed")]
    add_ratios(entries, "full")
    assert entries[1]["ratios_to_reference"] == {"peak_memory": 1.0, "tensor_peak": 1.0, "memory_total": 1.0,
                                                 "train_slices_per_second": 1.0, "inference_slices_per_second": 1.0}
    assert entries[0]["ratios_to_reference"] == {"peak_memory": 0.25, "tensor_peak": 0.25, "memory_total": 0.25,
                                                 "train_slices_per_second": 1.5, "inference_slices_per_second": 0.8}
    assert set(entries[2]["ratios_to_reference"].values()) == {None}
    orphans = [_entry("lora", 300, 500, 3.0, 8.0), _entry("full", 1, 1, 1.0, 1.0, status="out_of_memory")]
    add_ratios(orphans, "full")
    assert set(orphans[0]["ratios_to_reference"].values()) == {None}


# --- slices and clean processes --------------------------------------------------------------------


def test_slices_are_thinned_evenly_and_round_trip(tmp_path: Path) -> None:
    stacks = [CaseStack("a", torch.rand(10, 3, 5, 7), torch.randint(0, 3, (10, 5, 7))),
              CaseStack("b", torch.rand(2, 3, 6, 4), torch.randint(0, 3, (2, 6, 4)))]
    thinned = thin_stacks(stacks, 6)
    assert [s.images.shape[0] for s in thinned] == [3, 2]
    assert torch.equal(thinned[0].images, stacks[0].images[[0, 4, 9]])  # first, middle, last
    save_slices(thinned, tmp_path / "slices.safetensors")
    loaded = load_slices(tmp_path / "slices.safetensors")
    assert [s.case_id for s in loaded] == ["a", "b"]
    assert all(torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels) for x, y in zip(loaded, thinned))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux RSS accounting")
def test_launcher_gives_the_worker_its_own_peak_rss() -> None:
    ballast = bytearray(300 * 2**20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page: resident
    code = "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)"
    direct = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    launched = subprocess.run([sys.executable, "-m", "medsaga.benchmark.launch", sys.executable, "-c", code],
                              capture_output=True, text=True, check=True, cwd=ROOT)
    del ballast
    # Started straight from this process, a child reports this process's peak as its own (>= 300 MB).
    assert int(direct.stdout) >= 300
    assert int(launched.stdout) < 100


# --- errors before any worker ----------------------------------------------------------------------


class _NoWorkers:
    def __call__(self, command: list[str]) -> tuple[int, str, str]:
        raise AssertionError(f"a worker was started: {command}")


@pytest.mark.parametrize("methods, fragment", [("galore,samed", "unknown method 'samed'"),
                                               ("galore:rnk=4", "bad options for method 'galore'"),
                                               ("decoder@cache,lora@cache", "lora@cache: method 'lora' trains its "
                                                                            "image encoder")])
def test_bad_methods_fail_before_any_worker(tmp_path: Path, methods: str, fragment: str) -> None:
    options = BenchmarkOptions(data_dir=SAMPLE, out=tmp_path / "bench", model="tiny", image_size=64, methods=methods)
    with pytest.raises(InputError, match=fragment):
        run_benchmark(options, QuietBenchmarkReporter(), run_command=_NoWorkers())
    assert not (tmp_path / "bench").exists()


def test_bad_method_is_one_line_error_on_the_command_line(tmp_path: Path) -> None:
    result = medsaga("benchmark", SAMPLE, "--model", "tiny", "--methods", "galore,lora,bogus", "--out", tmp_path / "b")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --methods: unknown method 'bogus'; choose from galore, adapter, parser, lora, conv-lora, decoder, "
        "full or all"]
    assert not (tmp_path / "b").exists()


# --- end to end: real workers, tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[str], Path]:
    """Two entries (one with an option and a flag), tiny model at 64 px, 1 timed step, real workers."""
    from medsaga.benchmark.run import _run_command

    out = tmp_path_factory.mktemp("benchmark")
    stdouts: list[str] = []

    def recording(command: list[str]) -> tuple[int, str, str]:
        status, stdout, stderr = _run_command(command)
        stdouts.append(stdout)
        assert status == 0, stderr
        return status, stdout, stderr

    options = BenchmarkOptions(data_dir=SAMPLE, out=out, model="tiny", image_size=64, batch_size=2, steps=1,
                               methods="galore@ckpt:layerwise=true,full", threads=1, device="cpu")
    document = run_benchmark(options, QuietBenchmarkReporter(), run_command=recording)
    return document, stdouts, out


def test_worker_prints_one_json_line_with_every_field(measured) -> None:
    document, stdouts, _ = measured
    assert len(stdouts) == 2
    for stdout in stdouts:
        lines = stdout.strip().splitlines()
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert set(record) == set(RECORD_FIELDS)
        assert record["status"] == "ok" and record["error"] is None
        assert all(record[key] is not None for key in RECORD_FIELDS if key not in ("error", "embedding_cache")), record
        assert record["embedding_cache"] is None  # galore and full have nothing to cache
        assert record["memory_profile"] == "lean"  # as finetune runs them by default
        assert set(record["memory"]) == {"frozen_parameters", "trainable_parameters", "gradients",
                                         "optimizer_state", "saved_activations", "sum_of_peaks"}
        assert record["peak_memory"]["kind"] == "peak RSS" and record["peak_memory"]["peak_reset_at_baseline"]
        assert set(record["peak_memory"]["malloc"]) == {"M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD"}  # tuned in the worker
        assert record["warmup_steps"] == 1 and len(record["train_step_seconds"]) == 1
        # One more, untimed step after the timed one was profiled: the tensor peak.
        tensors = record["tensor_peak"]
        assert tensors["measured"] and tensors["step"] == 3 and tensors["held_bytes"] == record["memory"]["optimizer_state"]
        assert tensors["in_step_bytes"] >= record["memory"]["saved_activations"]
        assert len(record["inference_batch_seconds"]) == 1 and record["torch_threads"] == 1
        assert record["train_slices_per_second"] > 0 and record["inference_slices_per_second"] > 0
    galore, full = document["entries"]
    assert galore["label"] == "galore@ckpt:layerwise=true" and galore["options"]["layerwise"] is True
    assert galore["activation_checkpointing_applied"] and galore["precision"] == "fp32"
    # Layer-wise GaLore frees each gradient in its hook: far fewer gradient bytes alive than full's.
    assert galore["memory"]["gradients"] < full["memory"]["gradients"] / 2
    assert galore["trainable_parameters"] == full["trainable_parameters"]
    assert galore["tensor_peak"]["bytes"] < full["tensor_peak"]["bytes"]  # tiny: the decoder (4 M) dominates both


def test_outputs_and_ratios(measured) -> None:
    document, _, out = measured
    galore, full = document["entries"]
    assert document["reference"] == "full"
    assert set(full["ratios_to_reference"].values()) == {1.0}
    ratios = galore["ratios_to_reference"]
    assert ratios["memory_total"] == pytest.approx(galore["memory"]["sum_of_peaks"] / full["memory"]["sum_of_peaks"])
    assert ratios["train_slices_per_second"] == pytest.approx(
        galore["train_slices_per_second"] / full["train_slices_per_second"])
    written = json.loads((out / JSON_FILE).read_text())
    assert [e["label"] for e in written["entries"]] == ["galore@ckpt:layerwise=true", "full"]
    assert written["weights"].startswith("random weights") and written["data"]["slices"] >= 2
    markdown = (out / MARKDOWN_FILE).read_text()
    assert markdown == markdown_table(written) and "| `galore@ckpt:layerwise=true` |" in markdown
    with Image.open(io.BytesIO((out / CHART_FILE).read_bytes())) as picture:
        assert picture.format == "PNG" and picture.width > 600 and picture.height > 300


def test_table_on_the_command_line(measured, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.benchmark_cmd import _print_table

    document, _, out = measured
    _print_table(document, out)
    printed = capsys.readouterr().out
    assert "galore@ckpt:layerwise=true" in printed and "(1.00×)" in printed and "random weights" in printed


def test_existing_outputs_need_force(measured) -> None:
    _, _, out = measured
    result = medsaga("benchmark", SAMPLE, "--model", "tiny", "--methods", "full", "--out", out)
    assert_one_line_error(result, out, "already holds benchmark.json", "--force")


def test_worker_with_cache_times_the_steps_on_the_cache_and_the_build_apart(tmp_path: Path) -> None:
    """In process (no fresh worker): the record of a @cache entry carries the cache's build."""
    from medsaga.benchmark.worker import WorkerSpec, measure

    stacks = [CaseStack("a", torch.rand(4, 3, 40, 40), torch.randint(0, 3, (4, 40, 40)))]
    save_slices(stacks, tmp_path / "slices.safetensors")
    spec = WorkerSpec(label="decoder@cache", method="decoder", options={}, precision="fp32",
                      activation_checkpointing=False, model="tiny", image_size=64, num_classes=2, batch_size=2,
                      steps=1, device="cpu", seed=0, slices=str(tmp_path / "slices.safetensors"), cache_views=2)
    record = measure(spec)
    assert record["status"] == "ok" and set(record) == set(RECORD_FIELDS)
    cache = record["embedding_cache"]
    assert (cache["views"], cache["slices"], cache["frozen_module"]) == (2, 4, "sam.image_encoder")
    assert cache["build_seconds"] > 0 and cache["bytes"] > 0
    assert len(record["train_step_seconds"]) == 1 and record["train_slices_per_second"] > 0


def test_registry_order_is_the_default() -> None:
    assert method_names() == NAMES  # 'all' expands to this order
