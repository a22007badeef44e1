"""Ahead-of-time compile of every Triton kernel for real NVIDIA targets, without a GPU.

The interpreter tests (``test_triton_ternary.py``, ``test_mole_gate.py``) check what the kernels
compute; they cannot see what only the GPU compiler rejects (int8 ``tl.dot`` shapes, layouts,
shared-memory limits, type errors in the lowering). Here ``triton.compile`` lowers each kernel to
PTX and runs ``ptxas`` (bundled with triton), and checks the shared memory per block fits, for sm_90 (Hopper: the int8 dot becomes ``wgmma``) and
sm_80 (Ampere: ``mma.sync``), with the options the launchers pass (no FP contraction):

- ``_w2a8_gemv_kernel`` / ``_w2a8_gemm_kernel``: every autotune config, both weight layouts, on sm_90;
  the first config of each layout on sm_80; float32, bfloat16, float16 and raw int32 outputs;
- ``_absmax_quant_kernel`` for the three activation dtypes; the two MoLE kernels.

Nothing runs. Skipped where triton is missing or this process runs Triton's interpreter.
"""

from __future__ import annotations

import importlib.util

import pytest

from lmops_kernels.triton import interpreting

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None or interpreting(),
    reason="needs triton, outside its interpreter (TRITON_INTERPRET=1 is set)",
)

_FLOAT = {"float32": "*fp32", "bfloat16": "*bf16", "float16": "*fp16"}


def _compile(py_fn, signature: dict[str, str], constexprs: dict, arch: int, num_warps: int = 4, num_stages: int = 3):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = triton.jit(py_fn)
    sig = {name: signature.get(name, "constexpr") for name in fn.arg_names}
    missing = [n for n, t in sig.items() if t == "constexpr" and n not in constexprs]
    assert not missing, f"no value for constexpr arguments {missing}"
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    kernel = triton.compile(
        src,
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": num_stages, "enable_fp_fusion": False},
    )
    assert kernel.asm["cubin"], "ptxas produced no cubin"
    # dynamic shared memory per block: 227 KiB on H100, 163 KiB on A100; more fails at launch
    limit = {90: 227 * 1024, 80: 163 * 1024}[arch]
    assert kernel.metadata.shared <= limit, f"{kernel.metadata.shared} bytes of shared memory > {limit} on sm_{arch}"
    return kernel


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


def _matmul_signature(out: str) -> dict[str, str]:
    return {
        "x_ptr": "*i8", "w_ptr": "*u8", "out_ptr": out, "s_ptr": "*fp32", "gamma_ptr": "*fp32", "bias_ptr": "*fp32",
        "M": "i32", "N": "i32", "K": "i32", "KB": "i32", "stride_x": "i32", "M_BUCKET": "i32",
    }


def _matmul_cases():
    from lmops_kernels.triton import ternary as T

    cases = []
    for name, fn, configs, block_m in (
        ("gemv", T._w2a8_gemv_kernel, T._gemv_configs(False), 16),
        ("gemm", T._w2a8_gemm_kernel, T._gemm_configs(False), None),
    ):
        for rows in (True, False):
            for i, cfg in enumerate(configs):
                archs = (90, 80) if i == 0 else (90,) if rows else ()
                for arch in archs:
                    out = ("bfloat16", "int32")[i % 2] if arch == 90 else "float16"
                    cases.append(pytest.param(name, fn, cfg, block_m, rows, arch, out, id=f"{name}-{'rows' if rows else 'tiled'}-cfg{i}-sm{arch}-{out}"))
    return cases


@pytest.mark.parametrize("name,fn,cfg,block_m,rows,arch,out", _matmul_cases())
def test_w2a8_kernels_compile(name, fn, cfg, block_m, rows, arch, out):
    epilogue = out != "int32"
    consts = {"EPILOGUE": epilogue, "HAS_BIAS": epilogue, "ROWS": rows, **cfg.kwargs}
    if block_m is not None:
        consts["BLOCK_M"] = block_m
    sig = _matmul_signature("*i32" if out == "int32" else _FLOAT[out])
    kernel = _compile(fn, sig, consts, arch, cfg.num_warps, cfg.num_stages)
    ptx = kernel.asm["ptx"]
    if name == "gemm":
        # the int8 dot must reach the tensor cores, not a scalar loop
        assert ("wgmma" in ptx or "mma.sync" in ptx) and ".s8" in ptx, "int8 tl.dot did not lower to an int8 MMA"


@pytest.mark.parametrize("dtype", list(_FLOAT))
def test_absmax_quant_kernel_compiles(dtype):
    from lmops_kernels.triton import ternary as T

    sig = {"x_ptr": _FLOAT[dtype], "q_ptr": "*i8", "s_ptr": "*fp32", "K": "i32", "stride_x": "i32", "stride_q": "i32", "K_STORE": "i32"}
    _compile(T._absmax_quant_kernel, sig, {"QP": 127.0, "QN": -128.0, "BLOCK_K": 1024}, 90)


def test_mole_kernels_compile():
    from lmops_kernels.triton import mole as Mo

    f32 = "*fp32"
    gate_sig = {n: f32 for n in ("z_ptr", "s_ptr", "b1_ptr", "gram_ptr", "p_ptr", "c_ptr", "d_ptr", "tau_ptr", "gates_ptr", "v_ptr")}
    gate_sig.update({"keep_ptr": "*i8", "T": "i32", "N": "i32", "R": "i32", "n_features": "fp32", "eps": "fp32"})
    _compile(Mo._gate_kernel, gate_sig, {"NORM": 0, "HAS_MASK": True, "BLOCK_T": 16, "BLOCK_R": 16, "BLOCK_N": 8}, 90)
    mix_sig = {"v_ptr": f32, "w_ptr": f32, "y_ptr": "*bf16", "T": "i32", "KR": "i32", "O": "i32"}
    _compile(Mo._mix_kernel, mix_sig, {"BLOCK_T": 64, "BLOCK_O": 64, "BLOCK_K": 32}, 90)
