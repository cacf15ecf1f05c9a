"""`medsaga plan`: the predicted tensor peak against the measured one, the fit, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medsaga.plan.extrapolate import PeakModel, StepMeasurement
from medsaga.plan.measure import measure_step
from medsaga.plan.run import fit_config, parse_memory, training_config
from tests.cli_helpers import medsaga

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
PROFILED = (224, 336, 448)
# Other sizes and batches than those profiled, one beyond the largest profiled size (extrapolated).
CHECKED = ((288, 3), (640, 2))


@pytest.mark.parametrize("method,profile", [("galore", "lean"), ("full", "speed"), ("lora", "lean")])
def test_predicted_peak_is_within_ten_percent_of_the_measured_one(method: str, profile: str) -> None:
    cpu = torch.device("cpu")
    config, _ = training_config(method, profile)
    model, measurements = fit_config(config, model_type="tiny", num_classes=3, sizes=PROFILED, device=cpu)
    assert {(m.image_size, m.batch_size) for m in measurements} == {(s, b) for s in PROFILED for b in (1, 2)}
    for image_size, batch_size in CHECKED:
        measured = measure_step(config, model_type="tiny", image_size=image_size, batch_size=batch_size,
                                num_classes=3, device=cpu)
        predicted = model.predict(image_size, batch_size)
        assert predicted.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.10), (image_size, batch_size)
        # Weights and optimizer state are counts: exact up to the size-dependent position embedding.
        assert predicted.model_bytes == pytest.approx(measured.model_bytes, rel=1e-3)
        assert predicted.optimizer_bytes == pytest.approx(measured.optimizer_bytes, rel=1e-3)


def test_fit_recovers_a_known_peak_and_the_largest_batch() -> None:
    def peak(size: int, batch: int) -> StepMeasurement:
        x = (size / 16) ** 2
        return StepMeasurement(size, batch, int(1000 + 2 * x), int(500 + 4 * x), int(300 + x + batch * (50 + 10 * x)))

    model = PeakModel.fit([peak(s, b) for s in (224, 336, 448) for b in (1, 2)])
    for size, batch in ((1024, 8), (512, 1)):
        assert model.predict(size, batch).peak_bytes == pytest.approx(peak(size, batch).peak_bytes)
    memory = peak(1024, 5).peak_bytes + 1
    assert model.largest_batch(1024, memory) == 5
    assert model.largest_batch(1024, 10) == 0
    with pytest.raises(ValueError, match="three image sizes"):
        PeakModel.fit([peak(224, 1), peak(224, 2)])


def test_memory_sizes_parse_with_their_units() -> None:
    assert parse_memory("12GiB") == 12 * 2**30
    assert parse_memory("8 GB") == 8 * 10**9
    assert parse_memory("24000MiB") == 24000 * 2**20
    for bad in ("12 apples", "-1GiB", "GiB"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_plan_command_prints_the_table_and_writes_json(tmp_path: Path) -> None:
    result = medsaga("plan", str(SAMPLE), "--model", "tiny", "--image-size", "512", "--batch-size", "4",
                     "--gpu-memory", "200MiB", "--methods", "galore,decoder", "--profile-sizes", "224,336,448",
                     "--out", str(tmp_path / "plan.json"))
    assert result.returncode == 0, result.stderr
    assert "medsaga plan: tiny at 512 px, batch 4" in result.stdout and "largest batch" in result.stdout
    document = json.loads((tmp_path / "plan.json").read_text())
    rows = {(row["method"], row["profile"]): row for row in document["rows"]}
    assert set(rows) == {("galore", "lean"), ("galore", "speed"), ("decoder", "lean"), ("decoder", "speed")}
    lean, speed = rows["galore", "lean"], rows["galore", "speed"]
    assert lean["applied"] == ["layerwise", "activation_checkpointing"]
    assert lean["prediction"]["peak_bytes"] < speed["prediction"]["peak_bytes"]
    for row in rows.values():
        fits = row["prediction"]["peak_bytes"] <= 200 * 2**20
        assert row["fits"] is fits and (row["largest_batch"] >= 4) is fits


@pytest.mark.parametrize("arguments,fragment", [
    (["--gpu-memory", "lots"], "--gpu-memory"),
    (["--methods", "galore,magic"], "unknown magic"),
    (["--profile-sizes", "224,224,448"], "three different sizes"),
])
def test_plan_refuses_bad_options_in_one_line(arguments: list[str], fragment: str) -> None:
    result = medsaga("plan", str(SAMPLE), "--model", "tiny", *arguments)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


def test_finetune_plans_its_own_run_and_refuses_what_does_not_fit(tmp_path: Path) -> None:
    from medsaga.plan.own_run import plan_own_run
    from medsaga.train.finetune import finetune
    from tests.reporters import QuietReporter
    from tests.train_helpers import tiny_options

    reporter = QuietReporter()
    run = finetune(tiny_options(tmp_path / "fits", shots=1, steps=2, image_size=288, batch_size=3, method_options={},
                                gpu_memory="10GiB", checkpoint_every=0), reporter, memory_planner=plan_own_run)
    plan = run.report["memory_plan"]
    assert plan["fits"] is True and plan["largest_batch"] > 3
    assert any(message.startswith("memory plan: predicted GPU peak") for message in reporter.messages)
    memory, peak = run.report["memory"], run.report["tensor_peak"]
    measured = memory["frozen_parameters"] + memory["trainable_parameters"] + memory["optimizer_state"] \
        + peak["in_step_bytes"]
    assert plan["prediction"]["peak_bytes"] == pytest.approx(measured, rel=0.10)

    out = tmp_path / "too-small"
    result = medsaga("finetune", str(SAMPLE), "--model", "tiny", "--shots", "1", "--steps", "2", "--image-size", "288",
                     "--gpu-memory", "20MiB", "--out", str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("error: --gpu-memory 20MiB: predicted GPU peak") and "does not fit" in lines[-1]
    assert not out.exists()  # refused before the run folder was made
