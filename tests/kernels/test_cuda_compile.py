"""Compile check of the CUDA sources under ``csrc/cuda`` (no GPU needed, nothing is run).

Every ``csrc/cuda/*.cu`` is compiled with ``nvcc -std=c++17 -O3 -c`` for sm_80 and sm_90 in one call
(two ``-gencode`` pairs), into ``tmp_path``. The sources include no torch/ATen header, so no torch
include path is needed. Skipped, with the reason, only where ``nvcc`` is not on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CUDA_DIR = ROOT / "csrc" / "cuda"
CUDA_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: the CUDA compile check needs it")

ARCH_FLAGS = [
    "-gencode",
    "arch=compute_80,code=sm_80",
    "-gencode",
    "arch=compute_90,code=sm_90",
]


def test_cuda_sources_exist():
    assert CUDA_SOURCES, f"no .cu file under {CUDA_DIR}"


@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_nvcc_compiles_sm80_sm90(source: Path, tmp_path: Path):
    out = tmp_path / (source.stem + ".o")
    cmd = [NVCC, "-std=c++17", "-O3", "-c", *ARCH_FLAGS, "-I", str(CUDA_DIR), str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        print(proc.stderr)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}"
    assert out.exists() and out.stat().st_size > 0
