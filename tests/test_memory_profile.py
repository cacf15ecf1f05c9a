"""Lean by default: what the memory profile resolves to, what a default run uses, and that it saves memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsaga.errors import InputError
from medsaga.train.finetune import finetune, options_from_run
from medsaga.train.memory_profile import resolve_memory_profile
from tests.reporters import QuietReporter
from tests.train_helpers import tiny_options


def test_lean_profile_per_method() -> None:
    galore = resolve_memory_profile("galore", {}, speed=False, activation_checkpointing=None, grad_accum=1)
    assert galore.name == "lean" and galore.method_options == {"layerwise": True}
    assert galore.activation_checkpointing and galore.applied == ("layerwise", "activation_checkpointing")
    lora = resolve_memory_profile("lora", {"rank": 2}, speed=False, activation_checkpointing=None, grad_accum=1)
    assert lora.method_options == {"rank": 2} and lora.applied == ("activation_checkpointing",)
    # The decoder's encoder runs without gradients: checkpointing would save nothing, so none is claimed.
    decoder = resolve_memory_profile("decoder", {}, speed=False, activation_checkpointing=None, grad_accum=1)
    assert decoder.applied == () and not decoder.activation_checkpointing
    assert "nothing to save" in decoder.describe()


def test_speed_and_the_users_own_options_win() -> None:
    speed = resolve_memory_profile("galore", {}, speed=True, activation_checkpointing=None, grad_accum=1)
    assert speed.method_options == {} and not speed.activation_checkpointing and speed.applied == ()
    assert "--speed" in speed.describe()
    kept = resolve_memory_profile("galore", {"layerwise": False}, speed=False, activation_checkpointing=False,
                                  grad_accum=1)
    assert kept.method_options == {"layerwise": False} and not kept.activation_checkpointing and kept.applied == ()
    asked = resolve_memory_profile("galore", {}, speed=True, activation_checkpointing=True, grad_accum=1)
    assert asked.activation_checkpointing and asked.applied == ("activation_checkpointing",)


def test_a_lean_setting_gives_way_to_grad_accum_with_one_line() -> None:
    profile = resolve_memory_profile("galore", {}, speed=False, activation_checkpointing=None, grad_accum=2)
    assert "layerwise" not in profile.method_options and profile.applied == ("activation_checkpointing",)
    assert len(profile.notes) == 1 and "--grad-accum 2" in profile.notes[0] and "\n" not in profile.notes[0]
    # Both asked for by the user: that is theirs to resolve.
    with pytest.raises(InputError, match="layerwise=true.*--grad-accum 2.*drop one"):
        resolve_memory_profile("galore", {"layerwise": True}, speed=False, activation_checkpointing=None,
                               grad_accum=2)


def test_default_run_is_lean_says_so_and_needs_less_memory(tmp_path: Path) -> None:
    common = dict(method_options={}, steps=2, checkpoint_every=0, shots=1)
    reporter = QuietReporter()
    lean = finetune(tiny_options(tmp_path / "lean", **common), reporter)
    speed = finetune(tiny_options(tmp_path / "speed", speed=True, **common), QuietReporter())
    assert lean.method.options.layerwise and not speed.method.options.layerwise
    report = json.loads((tmp_path / "lean" / "report.json").read_text())
    assert report["memory_profile"] == {"profile": "lean", "applied": ["layerwise", "activation_checkpointing"],
                                        "notes": []}
    assert json.loads((tmp_path / "lean" / "config.json").read_text())["training"]["activation_checkpointing"]
    assert any(message.startswith("memory: lean (layerwise, activation_checkpointing)")
               for message in reporter.messages)
    # Layer-wise frees each gradient inside backward; checkpointing keeps only block inputs.
    assert lean.report["memory"]["gradients"] < speed.report["memory"]["gradients"]
    assert lean.report["memory"]["saved_activations"] < speed.report["memory"]["saved_activations"]
    assert lean.report["tensor_peak"]["bytes"] < speed.report["tensor_peak"]["bytes"]


def test_runs_from_before_the_lean_defaults_resume_as_they_ran(tmp_path: Path) -> None:
    finetune(tiny_options(tmp_path / "old", method_options={}, steps=2, shots=1, speed=True), QuietReporter())
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["options"]["speed"]  # as a config.json written before the lean defaults
    config["options"]["activation_checkpointing"] = False
    config_path.write_text(json.dumps(config))
    options = options_from_run(tmp_path / "old")
    assert options.speed and options.activation_checkpointing is False
    profile = resolve_memory_profile(options.method, options.method_options, speed=options.speed,
                                     activation_checkpointing=options.activation_checkpointing,
                                     grad_accum=options.grad_accum)
    assert profile.method_options == {} and not profile.activation_checkpointing
