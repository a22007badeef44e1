"""Builds the `lmops` distribution: the pure-Python packages plus the native extension `lmops_kernels._C`.

The CPU kernels are always built. Instruction sets are selected at run time (csrc/cpu/ternary.cpp);
the AVX2 and AVX-512 units get their instruction sets from `#pragma GCC target`, so the wheel carries
no `-march=native` and runs on any x86-64 CPU. CUDA sources under csrc/cuda are added only where the
installed torch has CUDA, `nvcc` is on the path and LMOPS_BUILD_CUDA=1 (opt-in until their bindings land).
"""

import glob
import os
import shutil

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - build-time message
    raise SystemExit(
        "lmops builds its extension against the installed torch: install torch first "
        "(pip install torch==2.13.0), then `pip install --no-build-isolation .`"
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _extension():
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off", "-fvisibility=hidden"]
    sources = ["csrc/ops.cpp"] + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu")
    # The CUDA kernels have no bindings yet (they are compile-tested by tests/kernels/test_cuda_compile.py
    # until a GPU can validate them), so building them into the extension is opt-in for now.
    with_cuda = (
        torch.version.cuda is not None
        and shutil.which("nvcc") is not None
        and bool(cuda_sources)
        and os.environ.get("LMOPS_BUILD_CUDA", "0") == "1"
    )
    if with_cuda:
        return CUDAExtension(
            "lmops_kernels._C",
            sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DLMOPS_WITH_CUDA"], "nvcc": ["-O3", "-DLMOPS_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
        )
    return CppExtension("lmops_kernels._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"])


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
