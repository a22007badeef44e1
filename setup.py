"""Builds the `lmops` distribution: the pure-Python packages plus the native op library `lmops_kernels._C`.

`_C` is a plain C++ library of torch ops (TORCH_LIBRARY; no pybind, no Python headers, built with
py_limited_api so it links no libtorch_python): `lmops_kernels` loads it with `torch.ops.load_library`,
and a C++ program or an AOTInductor model can load it without Python.

The CPU kernels are always built. Instruction sets are selected at run time (csrc/cpu/ternary.cpp);
the AVX2 and AVX-512 units get their instruction sets from `#pragma GCC target`, so the wheel carries
no `-march=native` and runs on any x86-64 CPU. The CUDA kernels and their bindings (csrc/cuda) are built in
where the installed torch has CUDA and `nvcc` is on the path, for the architectures in TORCH_CUDA_ARCH_LIST
(default here: 8.0;9.0+PTX; the tensor-core GEMM needs sm_80+). LMOPS_BUILD_CUDA=0 skips them.
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
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp", "csrc/mole_weights.cpp"] + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(HERE, "lmops_kernels")]  # schemas.def, the one list of op schemas
    cuda_sources = _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    with_cuda = (
        torch.version.cuda is not None
        and shutil.which("nvcc") is not None
        and bool(cuda_sources)
        and os.environ.get("LMOPS_BUILD_CUDA", "1") != "0"
    )
    if with_cuda:
        # torch's default arch list is the visible GPU's (or a long list when none is visible); the kernels
        # need sm_80+ (int8 mma.sync): SASS for Ampere (runs on every sm_8x) and Hopper, PTX for later GPUs.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        return CUDAExtension(
            "lmops_kernels._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            py_limited_api=True,  # no libtorch_python, no Python symbols: loadable from C++ alone
            extra_compile_args={
                "cxx": cxx + ["-DLMOPS_WITH_CUDA"],
                # no --use_fast_math: the epilogue must round like the reference (see ternary_kernels.cuh)
                "nvcc": ["-O3", "-DLMOPS_WITH_CUDA", "-lineinfo"],
            },
            extra_link_args=["-fopenmp"],
        )
    return CppExtension(
        "lmops_kernels._C",
        sources,
        include_dirs=include_dirs,
        py_limited_api=True,  # no libtorch_python, no Python symbols: loadable from C++ alone
        extra_compile_args=cxx,
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
