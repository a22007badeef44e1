"""The native op library works without Python: a C++ program (``native_cpp/call_ops.cpp``, linked
against libtorch only, no libpython, no libtorch_python) dlopens ``lmops_kernels/_C*.so`` and calls
``lmops::ternary_linear``, ``lmops::quantize_activation_absmax`` and ``lmops::ternary_matmul_int``
through the dispatcher; its outputs equal the plain-torch reference bit for bit."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import lmops_kernels as lk
from kernel_data import random_activations, random_ternary
from lmops_kernels import _native
from lmops_kernels import reference as ref

HERE = Path(__file__).resolve().parent
CXX = shutil.which("g++") or shutil.which("c++")

pytestmark = [
    pytest.mark.skipif(CXX is None, reason="no C++ compiler on PATH"),
    pytest.mark.skipif(not _native.available(), reason=f"native extension missing: {_native.missing_reason()}"),
]


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    from torch.utils.cpp_extension import include_paths, library_paths

    out = tmp_path_factory.mktemp("native_cpp") / "call_ops"
    libs = library_paths()
    cmd = [
        CXX, "-std=c++17", "-O1", str(HERE / "native_cpp" / "call_ops.cpp"), "-o", str(out),
        *[f"-I{p}" for p in include_paths()], *[f"-L{p}" for p in libs], *[f"-Wl,-rpath,{p}" for p in libs],
        "-ltorch_cpu", "-lc10", "-ldl",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    return out


def _needed(path: Path) -> list[str]:
    """The shared libraries ``path`` names as needed (its DT_NEEDED entries, as ``ldd`` resolves them)."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_program_and_library_need_no_python(program):
    for path in (program, _native.library_path()):
        needed = _needed(path)
        assert any(name.startswith("libtorch_cpu") for name in needed), needed
        assert not [name for name in needed if "python" in name], needed  # no libpython, no libtorch_python


@pytest.mark.parametrize("m,k,n", [(1, 4096, 13), (3, 37, 9), (17, 100, 65)])
def test_ops_called_from_cpp_equal_the_reference(program, tmp_path, m, k, n):
    gen = torch.Generator().manual_seed(m * 100 + k + n)
    x = random_activations((m, k), torch.float32, gen)
    q = random_ternary(n, k, gen)
    packed = lk.pack_ternary(q)
    scale = torch.rand(1, generator=gen) * 0.05 + 0.01
    for name, t in (("x.f32", x), ("packed.u8", packed), ("scale.f32", scale)):
        (tmp_path / name).write_bytes(t.contiguous().numpy().tobytes())
    env = {k_: v for k_, v in os.environ.items() if not k_.startswith("PYTHON")}
    proc = subprocess.run(
        [str(program), str(_native.library_path()), str(tmp_path), str(m), str(k), str(n)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]

    def read(name, dtype, shape):
        return torch.frombuffer(bytearray((tmp_path / name).read_bytes()), dtype=dtype).reshape(shape)

    want_q, want_s = ref.quantize_activation_absmax(x)
    assert torch.equal(read("q.i8", torch.int8, (m, k)), want_q)
    assert torch.equal(read("s.f32", torch.float32, (m, 1)), want_s)
    assert torch.equal(read("acc.i32", torch.int32, (m, n)), ref.ternary_matmul_int(want_q, packed))
    assert torch.equal(read("y.f32", torch.float32, (m, n)), ref.ternary_linear(x, packed, scale))


def test_aotinductor_package_calls_the_native_op(tmp_path):
    """torch.export + AOTInductor: the compiled model (C++) calls lmops::ternary_linear through the
    dispatcher, and equals the eager packed layer bit for bit."""
    from lmops import BitLinear

    torch.manual_seed(0)
    layer = BitLinear(64, 24, bias=True).pack().eval()
    x = random_activations((3, 64), torch.float32, torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = layer(x)
        program = torch.export.export(layer, (x,))
        assert "torch.ops.lmops.ternary_linear.default" in program.graph_module.code
        package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "bitlinear.pt2"))
    runner = torch._inductor.aoti_load_package(package)
    assert torch.equal(runner(x), want)
