"""segment-anything's model code imports without torchvision; the CLI starts with or without it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Makes any `import torchvision` fail, as it does on machines whose torchvision wheel is a CUDA build.
BLOCK_TORCHVISION = textwrap.dedent("""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                raise ImportError("torchvision is blocked in this test")
            return None
    sys.meta_path.insert(0, _Block())
""")

# A stand-in torchvision exposing just what segment_anything's package __init__ imports.
FAKE_TORCHVISION = {
    "torchvision/__init__.py": "",
    "torchvision/transforms/__init__.py": "",
    "torchvision/transforms/functional.py": "def resize(*a, **k): pass\ndef to_pil_image(*a, **k): pass\n",
    "torchvision/ops/__init__.py": "",
    "torchvision/ops/boxes.py": "def batched_nms(*a, **k): pass\ndef box_area(*a, **k): pass\n",
}


def _run(code: str, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)


def test_modeling_imports_without_torchvision() -> None:
    result = _run(BLOCK_TORCHVISION + textwrap.dedent("""
        from medsaga.model.sam_import import sam_modeling
        modeling = sam_modeling()
        encoder = modeling.ImageEncoderViT(img_size=64, patch_size=16, embed_dim=32, depth=1, num_heads=2,
                                           out_chans=16)
        assert modeling.Sam.__name__ == "Sam"
        assert not any(name.startswith("torchvision") for name in sys.modules)
        print("ok", sum(p.numel() for p in encoder.parameters()))
    """))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")


def test_cli_help_without_torchvision() -> None:
    result = _run(BLOCK_TORCHVISION + "import sys; sys.argv = ['medsaga', '--help']\n"
                  "from cli.main import run; run()")
    assert result.returncode == 0, result.stderr
    assert "inspect" in result.stdout


def test_modeling_with_torchvision_installed(tmp_path: Path) -> None:
    for relative, text in FAKE_TORCHVISION.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    result = _run(textwrap.dedent("""
        import segment_anything  # the full package, as on a workstation with torchvision
        from medsaga.model.sam_import import sam_modeling
        assert sam_modeling() is segment_anything.modeling
        assert hasattr(segment_anything, "SamPredictor")
        print("ok")
    """), extra_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
