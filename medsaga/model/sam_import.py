"""Import segment-anything's model code without running its package ``__init__``.

``segment_anything/__init__.py`` imports the predictor and mask generator, which import
torchvision; torchvision has no CPU build that imports on our machines, and we need none of it.
``segment_anything.modeling`` and ``build_sam`` only need torch. So we register a bare parent
package built from the installed package's location and import the submodules below it.
This is the only place in medsaga that imports ``segment_anything``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

_PACKAGE = "segment_anything"


def _ensure_bare_package() -> None:
    """Put an empty ``segment_anything`` package (with the real search path) into ``sys.modules``."""
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("segment-anything is not installed: pip install segment-anything==1.0")
    package = ModuleType(_PACKAGE)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    package.__file__ = spec.origin
    sys.modules[_PACKAGE] = package


def sam_modeling() -> ModuleType:
    """``segment_anything.modeling`` (Sam, ImageEncoderViT, MaskDecoder, PromptEncoder, ...)."""
    _ensure_bare_package()
    return importlib.import_module(f"{_PACKAGE}.modeling")
