"""Compile check of the CUDA backend (no GPU needed, nothing is run).

- Every ``csrc/cuda/*.cu`` (the kernels, no torch header) is compiled with ``nvcc -c`` for sm_80 and
  sm_90 (two ``-gencode`` pairs); ``ptxas -v`` must report no register spills and no stack frame in
  any kernel (a spill in the decode loop costs more than the weight traffic it saves).
- The bindings, ``csrc/cuda/*.cpp`` and ``csrc/ops.cpp`` with ``-DLMOPS_WITH_CUDA``, are compiled as
  host C++ through ``nvcc -x c++`` (which adds the CUDA include path) against this torch's headers,
  exactly as ``setup.py`` builds them where torch has CUDA. The CPU torch wheel ships the c10/cuda
  headers but not the generated ``cuda_cmake_macros.h`` (it only sets the shared-library export
  macro), hence ``-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE``. Linking needs the CUDA torch libraries and is
  not checked here.

All compiles run in parallel into ``tmp_path``. Skipped, with the reason, only where ``nvcc`` is not on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
CUDA_DIR = CSRC / "cuda"
KERNEL_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
BINDING_SOURCES = sorted(CUDA_DIR.glob("*.cpp")) + [CSRC / "ops.cpp", CSRC / "autograd.cpp", CSRC / "mole_weights.cpp"]
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: the CUDA compile check needs it")

ARCH_FLAGS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]


def _kernel_cmd(source: Path, out: Path) -> list[str]:
    return [NVCC, "-std=c++17", "-O3", "-c", *ARCH_FLAGS, "-Xptxas", "-v", "-I", str(CUDA_DIR), str(source), "-o", str(out)]


def _binding_cmd(source: Path, out: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}", f"-I{CSRC}", f"-I{ROOT / 'lmops_kernels'}"]
    return [
        NVCC, "-x", "c++", "-std=c++20", "-O0", "-c", "-DLMOPS_WITH_CUDA", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        "-DTORCH_EXTENSION_NAME=_C", *includes, str(source), "-o", str(out),
    ]


def test_cuda_sources_exist():
    assert KERNEL_SOURCES, f"no .cu file under {CUDA_DIR}"
    assert (CUDA_DIR / "ops_cuda.cpp").exists(), "the CUDA bindings (csrc/cuda/ops_cuda.cpp) are missing"


def test_nvcc_compiles_kernels_and_bindings(tmp_path: Path):
    jobs = [(src, _kernel_cmd(src, tmp_path / f"{src.stem}.cu.o")) for src in KERNEL_SOURCES]
    jobs += [(src, _binding_cmd(src, tmp_path / f"{src.stem}.cpp.o")) for src in BINDING_SOURCES]
    procs = [(src, cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)) for src, cmd in jobs]
    failures = []
    for src, cmd, proc in procs:
        _, err = proc.communicate(timeout=600)
        out = Path(cmd[cmd.index("-o") + 1])
        if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
            failures.append(f"{src.name}: {' '.join(cmd)} failed ({proc.returncode}):\n{err[-4000:]}")
        elif src.suffix == ".cu":
            spills = [line.strip() for line in err.splitlines() if re.search(r"\b[1-9]\d* bytes (spill|stack)", line)]
            kernels = err.count("Compiling entry function")
            if not kernels or spills:
                failures.append(f"{src.name}: {kernels} kernels compiled, spills or stack frames: {spills[:6]}")
    assert not failures, "\n\n".join(failures)
