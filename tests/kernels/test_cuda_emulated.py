"""The CUDA kernels' own source, run on the CPU under an emulator, against the plain-torch reference.

``csrc/cuda/ternary_kernels.cu`` is compiled as C++ with ``-DLMOPS_CUDA_EMULATE``
(``tests/kernels/cuda_emu/cuda_emu.h``: each block's threads are std::threads, ``__syncthreads`` a
barrier, shuffles / ``mma.sync`` m16n8k32 / ``ldmatrix`` computed per lane from the PTX ISA fragment
layouts, ``cp.async`` synchronous) into a small driver (``cuda_emu/driver.cpp``) that runs the same
launchers the bindings call. This checks the kernels' indexing, tails, reductions, fragment layouts
and epilogue rounding without a GPU; it cannot check timing, coalescing or asynchronous-copy hazards
(the GPU tests in ``test_gpu_cuda.py`` do the same checks on hardware).

Checks, all bit for bit: activation quantization (float32, bfloat16, float16; NaN and Inf rows;
8 and 4 bits); the exact int32 product through the dp4a GEMV and the mma.sync GEMM, each on any M,
with the GEMM's three warp-tile widths (picked from the emulated SM count ``LMOPS_EMU_SMS``);
``ternary_linear`` outputs in float32, bfloat16 and float16, with and without bias. Shapes are odd:
``N % 8 != 0`` (narrow last n-block), ``K % 16 != 0``, ``K % 32 == 16``, ``K`` spanning several GEMM
stages. The driver is built with AddressSanitizer and UBSan where the compiler links them, so an
out-of-bounds access is a failure too. Skipped where no C++20 compiler (``g++``) is found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmops_kernels as lk
from lmops_kernels import reference as ref

sys.path.insert(0, os.path.dirname(__file__))
from kernel_data import assert_same, extreme_matmul, random_activations, random_int8, random_ternary, seeded  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CXX = shutil.which("g++") or shutil.which("c++")
pytestmark = pytest.mark.skipif(CXX is None, reason="no C++ compiler (g++) on PATH for the CUDA emulator")

_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def _sanitizers() -> list[str]:
    # AddressSanitizer turns an out-of-bounds read or write of the kernels (a tail bound forgotten)
    # into a failure; used where this compiler can link it
    if CXX is None:
        return []
    probe = subprocess.run(
        [CXX, "-fsanitize=address,undefined", "-x", "c++", "-", "-o", os.devnull],
        input="int main() { return 0; }", capture_output=True, text=True, timeout=120,
    )
    return ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"] if probe.returncode == 0 else []


_SANITIZE = _sanitizers()


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cuda_emu") / "driver"
    cmd = [
        CXX, "-std=c++20", "-O1", "-ffp-contract=off", "-pthread", "-DLMOPS_CUDA_EMULATE", *_SANITIZE,
        f"-I{ROOT / 'csrc' / 'cuda'}", f"-I{ROOT / 'tests' / 'kernels' / 'cuda_emu'}", str(ROOT / "tests" / "kernels" / "cuda_emu" / "driver.cpp"), "-o", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
    return out


def _run(driver: Path, tmp: Path, op: str, dtype: str, path: str, m: int, n: int, k: int, bits: int = 8,
         bias: bool = False, sms: int | None = None) -> None:
    env = dict(os.environ)
    if sms is not None:
        env["LMOPS_EMU_SMS"] = str(sms)
    args = [str(driver), op, dtype, path, str(m), str(n), str(k), str(bits), str(int(bias)), str(tmp)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.returncode}\n{proc.stderr[-2000:]}"


def _write(tmp: Path, name: str, t: torch.Tensor) -> None:
    (tmp / f"{name}.bin").write_bytes(t.contiguous().view(torch.uint8).numpy().tobytes())


def _read(tmp: Path, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    raw = bytearray((tmp / f"{name}.bin").read_bytes())
    return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape).clone()


@pytest.mark.parametrize("dtype", list(_DTYPES))
@pytest.mark.parametrize("m,k,bits", [(3, 100, 8), (1, 33, 8), (5, 300, 4)])
def test_emulated_quantize(driver, tmp_path, dtype, m, k, bits):
    x = random_activations((m, k), _DTYPES[dtype], seeded(m * 100 + k + bits))
    if m >= 3:
        x[1, k // 2] = float("nan")
        x[2, 0] = float("-inf")
    _write(tmp_path, "x", x)
    _run(driver, tmp_path, "quant", dtype, "gemv", m, 0, k, bits)
    q_ref, s_ref = ref.quantize_activation_absmax(x, bits)
    assert_same(_read(tmp_path, "q", torch.int8, (m, k)), q_ref)
    assert_same(_read(tmp_path, "s", torch.float32, (m, 1)), s_ref)


# (M, K, N): odd N (narrow last n-block), K % 16 != 0, K % 32 == 16 (272), several GEMM stages (300+)
MATMUL_CASES = [
    ("gemv", 1, 33, 7), ("gemv", 3, 272, 13), ("gemv", 16, 257, 37), ("gemv", 20, 100, 9),
    ("gemm", 1, 33, 7), ("gemm", 17, 272, 13), ("gemm", 70, 385, 21),
]


@pytest.mark.parametrize("path,m,k,n", MATMUL_CASES)
def test_emulated_matmul_int(driver, tmp_path, path, m, k, n):
    gen = seeded(m * 7 + k * 13 + n)
    x_q = random_int8(m, k, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    _write(tmp_path, "x", x_q)
    _write(tmp_path, "packed", packed)
    _run(driver, tmp_path, "matmul_int", "f32", path, m, n, k)
    assert_same(_read(tmp_path, "y", torch.int32, (m, n)), ref.ternary_matmul_int(x_q, packed))


def test_emulated_matmul_int_extremes(driver, tmp_path):
    # |acc| = 128 K: every product at its largest, both signs, through both kernels
    m, k, n = 18, 1041, 11
    x_q, q = extreme_matmul(m, k, n)
    packed = lk.pack_ternary(q)
    _write(tmp_path, "x", x_q)
    _write(tmp_path, "packed", packed)
    for path in ("gemv", "gemm"):
        _run(driver, tmp_path, "matmul_int", "f32", path, m, n, k)
        assert_same(_read(tmp_path, "y", torch.int32, (m, n)), ref.ternary_matmul_int(x_q, packed))


@pytest.mark.parametrize("sms,nt", [(1, 4), (6, 2), (1000, 1)], ids=["nt4", "nt2", "nt1"])
def test_emulated_gemm_tile_widths(driver, tmp_path, sms, nt):
    # M = 70 is two 64-row tiles and N = 197 is 25 n-blocks (the last 5 wide): 2 * ceil(25 / 16) = 4
    # blocks at 4 n-blocks per warp, 2 * ceil(25 / 8) = 8 at 2, so 1, 6 and 1000 SMs pick 4, 2 and 1
    m, k, n = 70, 272, 197
    gen = seeded(nt)
    x_q = random_int8(m, k, gen)
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    _write(tmp_path, "x", x_q)
    _write(tmp_path, "packed", packed)
    _run(driver, tmp_path, "matmul_int", "f32", "gemm", m, n, k, sms=sms)
    assert_same(_read(tmp_path, "y", torch.int32, (m, n)), ref.ternary_matmul_int(x_q, packed))


@pytest.mark.parametrize("dtype,bias", [("f32", False), ("f32", True), ("bf16", True), ("f16", False)])
@pytest.mark.parametrize("path,m,k,n", [("gemv", 3, 257, 13), ("gemv", 16, 272, 9), ("gemm", 19, 300, 21)])
def test_emulated_linear(driver, tmp_path, dtype, path, m, k, n, bias):
    gen = seeded(m * 31 + k * 3 + n + bias)
    x = random_activations((m, k), _DTYPES[dtype], gen)
    x[min(2, m - 1), 1] = float("nan")  # that output row is NaN, the others are unaffected
    packed = lk.pack_ternary(random_ternary(n, k, gen))
    gamma = torch.tensor([0.0371], dtype=torch.float32)
    b = torch.randn(n, generator=gen).to(_DTYPES[dtype]) if bias else None
    _write(tmp_path, "x", x)
    _write(tmp_path, "packed", packed)
    _write(tmp_path, "gamma", gamma)
    if bias:
        _write(tmp_path, "bias", b)  # in its own dtype, as the binding hands it to the kernels
    _run(driver, tmp_path, "linear", dtype, path, m, n, k, bias=bias)
    want = ref.ternary_linear(x, packed, gamma, b)
    assert_same(_read(tmp_path, "y", _DTYPES[dtype], (m, n)), want)
