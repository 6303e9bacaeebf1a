"""torchvision imported without torch's compiler stack (neuroprobe.models.tvimport, issue 20).

Each check runs in a fresh interpreter: whether ``torch._dynamo`` gets imported depends on
what the process imported before.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                         "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_torchvision_without_dynamo_and_the_real_one_afterwards():
    out = _run(
        "import sys, torch\n"
        "from neuroprobe.models.tvimport import import_torchvision\n"
        "tv = import_torchvision()\n"
        "import torchvision\n"
        "assert tv is torchvision\n"
        "no_dynamo = not any(k == 'torch._dynamo' or k.startswith('torch._dynamo.') "
        "for k in sys.modules)\n"
        "boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]\n"
        "y = torchvision.ops.roi_align(torch.arange(64.0).view(1, 1, 8, 8), boxes, 2)\n"
        "net = torchvision.models.resnet18(weights=None)\n"
        "from torchvision.ops.roi_align import is_compile_supported\n"
        "supported = is_compile_supported('cpu')\n"   # imports the real function on first use
        "import torch._dynamo\n"
        "real = hasattr(torch._dynamo, 'optimize') and hasattr(torch._dynamo, 'reset')\n"
        "print(no_dynamo, tuple(y.shape), supported, real, type(net).__name__)\n")
    assert out == "True (1, 1, 2, 2) True True ResNet"


def test_plain_import_when_the_compiler_is_loaded_already():
    out = _run(
        "import sys, torch, torch._dynamo\n"
        "real = sys.modules['torch._dynamo']\n"
        "from neuroprobe.models.tvimport import import_torchvision\n"
        "tv = import_torchvision()\n"
        "print(sys.modules['torch._dynamo'] is real, hasattr(tv.ops, 'roi_align'))\n")
    assert out == "True True"


def test_loading_a_torchvision_model_spec_leaves_dynamo_out():
    out = _run(
        "import sys\n"
        "from neuroprobe.models import load\n"
        "model, meta = load('torchvision:resnet18?weights=none')\n"
        "print('torch._dynamo' in sys.modules, sum(p.numel() for p in model.parameters()) > 0)\n")
    assert out == "False True"


def test_a_torchvision_needing_more_of_the_compiler_is_imported_plainly(tmp_path):
    """A torchvision whose import needs a name the placeholders lack: imported again the
    ordinary way (here a stand-in package on the path, imported once per attempt)."""
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import builtins\n"
        "builtins.tv_attempts = getattr(builtins, 'tv_attempts', 0) + 1\n"
        "from torch._dynamo.utils import counters\n")
    code = ("import builtins, sys\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "from neuroprobe.models.tvimport import import_torchvision\n"
            "tv = import_torchvision()\n"
            "print(builtins.tv_attempts, hasattr(tv, 'counters'), "
            "hasattr(sys.modules['torch._dynamo'], 'optimize'))\n")
    assert _run(code) == "2 True True"
