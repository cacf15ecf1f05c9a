"""Save and load what a method trained: ``trained.safetensors`` plus ``method.json``.

Only what the method trained is written (for ``decoder`` a few MB; GaLore changes the encoder's
weights, so for it the encoder is saved too). Rebuilding needs the base checkpoint, whose path and
SHA-256 the run's config records. Files are written atomically; safetensors holds tensors only,
so loading executes no code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from medsaga.errors import InputError
from medsaga.io.atomic import atomic_output
from medsaga.methods.base import TuningMethod, count_parameters
from medsaga.methods.registry import create_method

TRAINED_FILE = "trained.safetensors"
METHOD_FILE = "method.json"


def save_trained(method: TuningMethod[Any], model: nn.Module, folder: Path) -> dict[str, Any]:
    """Write the method's trained tensors and options into ``folder``; returns the JSON written."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = method.trained_state(model)
    trainable, total = count_parameters(model)
    description = {"method": method.name, "options": method.options.to_json(),
                   "trainable_parameters": trainable, "total_parameters": total,
                   "saved_tensors": len(state)}
    with atomic_output(folder / TRAINED_FILE) as temporary:
        save_file(state, str(temporary), metadata={"method": method.name})
    with atomic_output(folder / METHOD_FILE) as temporary:
        temporary.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return description


def load_trained(folder: Path, model: nn.Module) -> TuningMethod[Any]:
    """Rebuild the method saved in ``folder``, prepare ``model`` with it and load its tensors.

    ``model`` must be built as for training (same type, size, classes, base weights).

    Raises:
        InputError: the folder lacks the files, or they do not fit the model.
    """
    from safetensors.torch import load_file

    method_path, trained_path = folder / METHOD_FILE, folder / TRAINED_FILE
    for path in (method_path, trained_path):
        if not path.is_file():
            raise InputError("not found: is this a medsaga run folder?", path)
    try:
        description = json.loads(method_path.read_text(encoding="utf-8"))
        name, options = description["method"], description["options"]
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(f"not a medsaga method description ({error})", method_path) from None
    method = create_method(name, options)
    method.prepare(model)
    try:
        state = load_file(str(trained_path))
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise InputError(f"cannot read the trained weights ({error})", trained_path) from None
    try:
        method.load_trained_state(model, state)
    except ValueError as error:
        raise InputError(f"does not fit the model: {error}", trained_path) from None
    return method
