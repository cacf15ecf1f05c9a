"""The command line's shared options and its one-line command list (issue 28 §3, cli/options.py).

The commands are read as click builds them (``typer.main.get_command``), their library values
filled in as when a command runs (``Command.get_params``): an option several commands take says
the same thing, with the same default, in each of them, unless it means something else there
(listed below, with why); the defaults the library owns are the library's; ``medsaga --help``
gives each command one line.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from cli.main import app
from medsaga.errors import InputError
from tests.data_paths import ROOT

# Options several commands take with one meaning: one help text and one default everywhere.
SHARED = {"--device", "--force", "--seed", "--series", "--precision", "--plane", "--intensity", "--checkpoint",
          "--random-init", "--image-size", "--batch-size", "--model"}
# ... except in these commands, where the option means something else.
OWN_MEANING = {
    ("--checkpoint", "predict"): "the run's base checkpoint, found again after a move; not weights to start from",
    ("--image-size", "benchmark"): "one fixed size to measure at, not the model type's",
    ("--precision", "plan"): "the precision to plan for (fp32 or bf16), not the one to run at",
    ("--intensity", "evaluate"): "the overlays' window, not the preset the model sees",
    ("--model", "finetune"): "the model to fine-tune, by default the installed LiteMedSAM",
    ("--model", "select"): "the frozen encoder, which needs weights",
}
# Taken by several commands, each its own: never compared.
NOT_SHARED = {
    "--out": "each command names its own output (a run folder, the predictions, metrics, a JSON file)",
    "--gpu-memory": "plan says what fits; finetune stops a run that would not",
    "--methods": "benchmark's entries take flags and options; plan's are method names",
    "--steps": "benchmark's timed steps per entry; finetune's optimizer steps",
    "--slices": "select's slices per scan; evaluate's slices per overlay picture",
    "--shots": "finetune trains on K cases; select picks K scans",
    "--activation-checkpointing": "finetune's is on by default where the encoder trains; benchmark's forces it",
}
# Defaults that differ by command: each is the command's library options' own.
LIBRARY_DEFAULTS = {
    ("--batch-size", "finetune"): ("medsaga.train.options", "FinetuneOptions", "batch_size"),
    ("--batch-size", "plan"): ("medsaga.train.options", "FinetuneOptions", "batch_size"),
    ("--batch-size", "predict"): ("medsaga.predict.pipeline", "PredictOptions", "batch_size"),
    ("--batch-size", "benchmark"): ("medsaga.benchmark.run", "BenchmarkOptions", "batch_size"),
    ("--model", "benchmark"): ("medsaga.benchmark.run", "BenchmarkOptions", "model"),
    ("--model", "plan"): ("medsaga.benchmark.run", "BenchmarkOptions", "model"),
    ("--model", "select"): ("medsaga.select.run", "SelectOptions", "model"),
    ("--image-size", "benchmark"): ("medsaga.benchmark.run", "BenchmarkOptions", "image_size"),
    ("--plane", "finetune"): ("medsaga.train.options", "FinetuneOptions", "plane"),
    ("--plane", "select"): ("medsaga.select.run", "SelectOptions", "plane"),
    ("--rule", "select"): ("medsaga.select.pick", None, "DEFAULT_RULE"),
    ("--tolerance", "evaluate"): ("medsaga.evaluate.run", None, "DEFAULT_TOLERANCE_MM"),
}


def commands() -> dict[str, Any]:
    """``{"finetune": click command, ..., "weights verify": ...}``, library values filled in."""
    found: dict[str, Any] = {}

    def walk(command: Any, name: str, parent: Any) -> None:
        context = typer.Context(command, parent=parent, info_name=name or "medsaga")
        if hasattr(command, "commands"):
            for sub_name, sub in command.commands.items():
                walk(sub, f"{name} {sub_name}".strip(), context)
        if name:
            command.get_params(context)  # fills in the library's part, as when the command runs
            found[name] = command

    walk(typer.main.get_command(app), "", None)
    return found


def options() -> dict[str, dict[str, Any]]:
    """``{"--device": {"finetune": its click option, ...}, ...}``, by each option's long name."""
    table: dict[str, dict[str, Any]] = {}
    for name, command in commands().items():
        for param in command.params:
            if param.param_type_name == "option":
                table.setdefault(max(param.opts, key=len), {})[name] = param
    return table


def library_value(module: str, owner: str | None, attribute: str) -> Any:
    found = importlib.import_module(module)
    return getattr(getattr(found, owner) if owner else found, attribute)


def test_every_option_taken_by_several_commands_is_shared_or_said_not_to_be() -> None:
    several = {option for option, takers in options().items() if len(takers) > 1}
    assert several - SHARED - set(NOT_SHARED) == set(), "declare it in cli/options.py, or say why it differs"
    assert SHARED <= several and set(NOT_SHARED) <= several  # the lists name real options


@pytest.mark.parametrize("option", sorted(SHARED))
def test_a_shared_option_says_the_same_in_every_command(option: str) -> None:
    takers = {name: param for name, param in options()[option].items() if (option, name) not in OWN_MEANING}
    assert len(takers) > 1, takers
    reference_name, reference = next(iter(takers.items()))
    for name, param in takers.items():
        assert param.help == reference.help, f"{option}: {name} and {reference_name} differ"
        assert param.opts == reference.opts and param.secondary_opts == reference.secondary_opts, (name, option)
        assert "{" not in param.help, param.help  # every library field filled in
        if (option, name) not in LIBRARY_DEFAULTS:
            assert param.default == reference.default, f"{option}: default in {name} differs from {reference_name}"


@pytest.mark.parametrize("option, command", sorted(LIBRARY_DEFAULTS))
def test_defaults_are_the_librarys(option: str, command: str) -> None:
    assert options()[option][command].default == library_value(*LIBRARY_DEFAULTS[(option, command)])


def test_every_model_option_lists_the_registered_model_types() -> None:
    """From the registry, when shown: a type registered later is listed too."""
    from medsaga.model.registry import MODEL_TYPES, model_type_names, register, unregister

    register(replace(MODEL_TYPES["tiny"], name="third_type"))
    try:
        takers = options()["--model"]
        assert set(takers) == {"finetune", "select", "benchmark", "plan"}
        for name, param in takers.items():
            assert ", ".join(model_type_names()) in param.help, (name, param.help)
            assert "litemedsam" in param.help and "third_type" in param.help
    finally:
        unregister("third_type")
    assert "third_type" not in options()["--model"]["benchmark"].help


def test_benchmark_takes_litemedsam(tmp_path: Path) -> None:
    """--model litemedsam passes every check that needs no data (the error is then the missing
    dataset's); an unknown type is refused with the registered ones."""

    def error(model: str) -> str:
        result = CliRunner().invoke(app, ["benchmark", str(tmp_path / "no-data"), "--model", model, "--out",
                                          str(tmp_path / "out"), "--device", "cpu"])
        assert isinstance(result.exception, InputError), result.output
        return str(result.exception)

    assert "no-data" in error("litemedsam")
    refused = error("nonsense")
    assert "nonsense" in refused and "litemedsam" in refused


def test_help_lists_each_command_in_one_line() -> None:
    """In an 80-column log: one row per command in the commands panel, none wrapped."""
    env = {key: value for key, value in os.environ.items() if key not in ("TERMINAL_WIDTH", "COLUMNS")}
    result = subprocess.run([sys.executable, "-m", "cli.main", "--help"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120, env={**env, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = next(index for index, line in enumerate(lines) if "Commands" in line)
    end = next(index for index in range(start, len(lines)) if lines[index].startswith("╰"))
    rows = lines[start + 1:end]
    names = [row.strip("│ ").split()[0] for row in rows]
    assert all(not row.startswith("│  ") for row in rows), "a summary wraps:\n" + "\n".join(rows)
    assert names == list(typer.main.get_command(app).commands), names


def test_every_command_has_a_short_one_line_summary() -> None:
    top = typer.main.get_command(app)
    for name, command in top.commands.items():
        summary = command.short_help
        assert summary and "\n" not in summary and len(summary) <= 64, (name, summary)
        assert summary.endswith("."), (name, summary)
