"""The kernels and the layers on their own: without transformers (an optional extra) and without the
native extension (a loud, single warning, then the plain-torch reference).

Each case runs in a fresh interpreter (``sys.modules`` and ``sys.meta_path`` set up before anything
of lmops is imported), on this machine's install: nothing is rebuilt or uninstalled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

BLOCK_HF = """
import importlib.abc, sys

class BlockHF(importlib.abc.MetaPathFinder):
    # as if transformers, peft and accelerate were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformers", "peft", "accelerate"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, BlockHF())
"""

LAYERS_RUN = """
import torch
import lmops, lmops_kernels as lk, lmops.bitnet, lmops.reslora, lmops.mole
from lmops import BitLinear, MoLELinear, ResLoRALinear

torch.manual_seed(0)
x = torch.randn(3, 40)
layer = BitLinear(40, 12)
y_train = layer(x)
y_train.sum().backward()
assert layer.weight.grad is not None
with torch.no_grad():
    y_train = layer(x)
layer.pack()
y_packed = layer(x)
q, gamma = layer.ternary_weight()
assert torch.equal(y_packed, lk.ternary_linear(x, lk.pack_ternary(q), gamma, layer.bias))
torch.testing.assert_close(y_packed, y_train, rtol=1e-5, atol=1e-5 * y_train.abs().max().item())
res = ResLoRALinear(layer, r=4, structure="none")
assert torch.equal(res(x), y_packed)  # B = 0 at init
mole = MoLELinear(BitLinear(40, 12).pack(), {"e0": (torch.randn(2, 40), torch.randn(12, 2), 1.0),
                                           "e1": (torch.randn(3, 40), torch.randn(12, 3), 0.5)})
assert mole(x).shape == (3, 12)
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("LMOPS_BACKEND", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def test_kernels_and_layers_work_without_transformers():
    proc = run_python(BLOCK_HF + LAYERS_RUN + """
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "peft", "accelerate"))
assert not loaded, loaded
try:
    import transformers
except ModuleNotFoundError:
    print("BLOCKED")
print("OK")
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["BLOCKED", "OK"], proc.stdout


def test_transformers_is_an_extra_not_a_dependency():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in reqs}  # noqa: E731
    assert "transformers" not in names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert {"transformers", "peft", "accelerate"} <= names(extras["hf"])
    assert {"transformers", "peft", "accelerate", "pytest"} <= names(extras["test"])


def test_missing_native_extension_warns_once_and_falls_back():
    proc = run_python("""
import os, sys, warnings
os.environ["LMOPS_NATIVE_LIBRARY"] = "/nonexistent/_C.so"  # as if the extension had not been built
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import lmops_kernels
    from lmops_kernels import _native
""" + textwrap.indent(LAYERS_RUN, "    ") + """
ours = [w for w in caught if issubclass(w.category, _native.NativeExtensionWarning)]
assert len(ours) == 1, [str(w.message) for w in caught]  # once, not per op call
assert issubclass(ours[0].category, UserWarning)
print(ours[0].message)
print("AVAILABLE", _native.available())
""")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    message = out.splitlines()[0]
    assert "lmops_kernels._C did not load (OSError: " in message and "/nonexistent/_C.so" in message
    assert "pip install torch==2.13.0 && pip install --no-build-isolation -e ." in message
    assert "about 100x slower" in message
    assert "AVAILABLE False" in out
