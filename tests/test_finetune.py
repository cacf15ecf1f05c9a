"""`medsaga finetune`: the run folder, the report, resume == uninterrupted, and input errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medsaga.errors import InputError
from medsaga.train.finetune import finetune, options_from_run
from tests.cli_helpers import medsaga
from tests.data_paths import SAMPLE
from tests.dataset_factory import make_nnunet
from tests.reporters import Interrupt, QuietReporter
from tests.train_helpers import tiny_options


def test_run_folder_holds_what_rebuilds_the_model(tmp_path: Path) -> None:
    outcome = finetune(tiny_options(tmp_path / "run", val=1), QuietReporter())
    run = tmp_path / "run"
    for name in ("config.json", "trained.safetensors", "method.json", "metrics.jsonl", "report.json",
                 "checkpoint/state.json", "checkpoint/state.safetensors"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"type": "tiny", "image_size": 64, "num_classes": 3, "checkpoint": None}
    assert config["classes"] == {"values": [0, 1, 2, 3], "names": ["background", "liver", "kidney", "spleen"]}
    assert config["dataset"]["train_cases"] == list(outcome.split.train) and len(outcome.split.train) == 2
    assert config["slicing"]["presets"] == ["ct-abdomen"] and config["slicing"]["plane"] == "axial"
    assert config["method"] == json.loads(json.dumps({"name": "galore", "options": outcome.method.options.to_json()}))
    report = json.loads((run / "report.json").read_text())
    assert report["steps"] == 6 and report["trainable_parameters"] > 0
    assert set(report["memory"]) >= {"frozen_parameters", "trainable_parameters", "gradients", "optimizer_state",
                                     "saved_activations", "sum_of_peaks"}
    assert report["memory"]["saved_activations"] > 0 and report["memory"]["gradients"] > 0
    assert len(report["validation_dice"]) >= 1
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    whole = finetune(tiny_options(tmp_path / "whole"), QuietReporter())
    with pytest.raises(Interrupt):
        finetune(tiny_options(tmp_path / "cut"), QuietReporter(stop_at=5))  # dies after the step-3 checkpoint
    assert not (tmp_path / "cut" / "trained.safetensors").exists()
    resumed_reporter = QuietReporter()
    resumed = finetune(options_from_run(tmp_path / "cut"), resumed_reporter, resume=True)
    assert resumed_reporter.first_step == 3 and resumed.result.first_step == 3
    expected = load_file(str(tmp_path / "whole" / "trained.safetensors"))
    actual = load_file(str(tmp_path / "cut" / "trained.safetensors"))
    assert expected.keys() == actual.keys()
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name
    whole_metrics = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    cut_metrics = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in cut_metrics] == [m["loss"] for m in whole_metrics]
    assert whole.result.final_loss == resumed.result.final_loss


def test_cached_run_records_its_cache_and_resumes_as_the_uninterrupted_run(tmp_path: Path) -> None:
    """The decoder on the embedding cache: rebuilt identically on resume, the same steps follow."""
    options = dict(shots=1, method="decoder", method_options={}, cache_embeddings="on", cache_views=2)
    whole = finetune(tiny_options(tmp_path / "whole", **options), QuietReporter())
    with pytest.raises(Interrupt):
        finetune(tiny_options(tmp_path / "cut", **options), QuietReporter(stop_at=5))
    resumed = finetune(options_from_run(tmp_path / "cut"), QuietReporter(), resume=True)
    assert resumed.result.first_step == 3
    expected = load_file(str(tmp_path / "whole" / "trained.safetensors"))
    actual = load_file(str(tmp_path / "cut" / "trained.safetensors"))
    assert expected.keys() == actual.keys() and all(torch.equal(v, actual[k]) for k, v in expected.items())
    assert whole.result.final_loss == resumed.result.final_loss
    config = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert config["embedding_cache"] == {"mode": "on", "enabled": True, "views": 2, "dtype": "fp32",
                                         "frozen_module": "sam.image_encoder"}
    assert config["training"]["cache_views"] == 2 and config["options"]["cache_embeddings"] == "on"
    report = json.loads((tmp_path / "whole" / "report.json").read_text())
    cache = report["embedding_cache"]
    slices = config["dataset"]["training_slices"]
    assert (cache["views"], cache["slices"], cache["entries"]) == (2, slices, 2 * slices)
    # Only the slice-views the 6 steps x 2 slices read are encoded (issue 29), each this many bytes:
    assert cache["encoded"] == cache["read"] == 12 < cache["entries"]
    assert cache["bytes"] == 12 * (256 * 4 * 4 * 4 + 64 * 64) and cache["build_seconds"] > 0
    assert 0 < cache["slices_per_second_including_build"] < report["slices_per_second"]


def test_cache_options_resolve_per_method_and_fail_before_any_work(tmp_path: Path) -> None:
    no_augment = finetune(tiny_options(tmp_path / "a", shots=1, steps=1, method="adapter", cache_embeddings="on",
                                       method_options={"width": 32}, augment=False), QuietReporter())
    assert no_augment.report["embedding_cache"]["views"] == 1  # one view without augmentation
    assert no_augment.report["embedding_cache"]["frozen_module"] == "sam.image_encoder.vit"
    reporter = QuietReporter()
    short = finetune(tiny_options(tmp_path / "d", shots=1, steps=1, method="decoder", method_options={},
                                  speed=True), reporter)
    # --speed weighs the build against the run: one step would not repay encoding every view first.
    assert short.report["embedding_cache"] is None and not short.report["cache_embeddings"]
    assert any("embedding cache off (auto, --speed)" in message for message in reporter.messages)
    lean = finetune(tiny_options(tmp_path / "lean", shots=1, steps=1, method="decoder", method_options={}),
                    QuietReporter())
    assert lean.report["cache_embeddings"] and lean.report["memory_profile"]["profile"] == "lean"
    assert lean.report["memory_profile"]["applied"] == ["embedding_cache"]
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["embedding_cache"]["enabled"] is False and config["training"]["cache_views"] == 0
    for changes, fragment in [({"cache_embeddings": "on"}, "method 'galore' trains its image encoder"),
                              ({"cache_embeddings": "yes"}, "must be auto, on or off"),
                              ({"method": "decoder", "method_options": {}, "cache_views": 0}, "at least 1"),
                              ({"method": "decoder", "method_options": {}, "cache_dtype": "fp8"}, "fp32, fp16, bf16"),
                              ({"attention": "flash"}, "--attention must be one of fast, sam")]:
        with pytest.raises(InputError, match=fragment):
            finetune(tiny_options(tmp_path / "bad", **changes), QuietReporter())
        assert not (tmp_path / "bad").exists()


def test_attention_is_recorded_and_runs_from_before_it_resume_with_sams(tmp_path: Path) -> None:
    finetune(tiny_options(tmp_path / "sam", steps=1, attention="sam"), QuietReporter())
    config = json.loads((tmp_path / "sam" / "config.json").read_text())
    assert config["options"]["attention"] == "sam" and config["training"]["fast_attention"] is False
    assert options_from_run(tmp_path / "sam").attention == "sam"
    del config["options"]["attention"]  # a run folder written before the option existed
    (tmp_path / "sam" / "config.json").write_text(json.dumps(config))
    assert options_from_run(tmp_path / "sam").attention == "sam"
    assert tiny_options(tmp_path / "new").attention == "fast"


def test_existing_run_folder_needs_force_and_only_a_run_is_replaced(tmp_path: Path) -> None:
    finetune(tiny_options(tmp_path / "run", steps=1), QuietReporter())
    with pytest.raises(InputError, match="already exists; pass --force"):
        finetune(tiny_options(tmp_path / "run", steps=1), QuietReporter())
    finetune(tiny_options(tmp_path / "run", steps=1, force=True), QuietReporter())
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a medsaga run folder"):
        finetune(tiny_options(precious, steps=1, force=True), QuietReporter())
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("method", ["adapter", "parser", "lora", "conv-lora", "decoder", "full"])
def test_other_methods_run_through_the_same_loop(tmp_path: Path, method: str) -> None:
    outcome = finetune(tiny_options(tmp_path / method, method=method, method_options={}, steps=2,
                                    checkpoint_every=0), QuietReporter())
    assert outcome.report["method"] == method
    assert outcome.result.memory.optimizer_state > 0
    assert outcome.report["trainable_parameters"] > 0
    assert outcome.report["total_parameters"] == 4_981_200  # the tiny SAM with 3 classes, before wrapping


def test_cli_finetune_end_to_end(tmp_path: Path) -> None:
    result = medsaga("finetune", SAMPLE, "--shots", "1", "--model", "tiny", "--image-size", "64", "--steps", "2",
                     "--batch-size", "2", "--out", tmp_path / "run", "-o", "rank=4")
    assert result.returncode == 0, result.stderr
    assert "shots (1):" in result.stderr
    for field in ("peak memory", "tensor peak", "held between steps", "optimizer state", "saved activations", "slices/s", "trainable; SAM has"):
        assert field in result.stdout, field
    assert json.loads((tmp_path / "run" / "method.json").read_text())["options"]["rank"] == 4


def _cli_error(tmp_path: Path, *args: str | Path) -> str:
    result = medsaga("finetune", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_cli_errors_are_one_line_before_any_work(tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ("--model", "tiny", "--out", out)
    assert "--shots 9 is more than the 8 labelled cases" in _cli_error(tmp_path, SAMPLE, "--shots", "9", *common)
    assert "not a positive multiple of 16" in _cli_error(tmp_path, SAMPLE, "--image-size", "250", *common)
    unlabelled = make_nnunet(tmp_path / "unlabelled", n_cases=2)
    shutil.rmtree(unlabelled / "labelsTr")
    assert "no label maps" in _cli_error(tmp_path, unlabelled, "--shots", "1", *common)
    undeclared = make_nnunet(tmp_path / "undeclared", n_cases=1, labels={"background": 0, "organ": 1})
    assert "label values [2] are not declared" in _cli_error(tmp_path, undeclared, "--shots", "1", *common)
    assert "--cache-embeddings on: method 'lora' trains its image encoder" in _cli_error(
        tmp_path, SAMPLE, "--method", "lora", "--cache-embeddings", "on", *common)
    fake = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, fake)
    line = _cli_error(tmp_path, SAMPLE, "--shots", "1", "--checkpoint", fake, "--out", out)
    assert str(fake) in line
    if not torch.cuda.is_available():
        assert "no usable CUDA device" in _cli_error(tmp_path, SAMPLE, "--device", "cuda", *common)
    assert not out.exists()  # nothing was started
