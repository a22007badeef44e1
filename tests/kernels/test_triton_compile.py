"""Ahead-of-time compile of every Triton kernel for real NVIDIA targets, without a GPU.

The interpreter tests (``test_triton_ternary.py``, ``test_mole_gate.py``) check what the kernels
compute; they cannot see what only the GPU compiler rejects (int8 ``tl.dot`` shapes, layouts,
shared-memory limits, type errors in the lowering). Here ``triton.compile`` lowers each kernel to
PTX and runs ``ptxas`` (bundled with triton), and checks the shared memory per block fits, for
sm_90 (Hopper: the int8 dot becomes ``wgmma``) and sm_80 (Ampere: ``mma.sync``), with the options the
launchers pass (no FP contraction):

- ``_w2a8_gemv_kernel`` / ``_w2a8_gemm_kernel``: every autotune config, both weight layouts
  (``planes``, ``tiled``), on sm_90, the GEMV both fused (``SPLIT_K = 1``) and split (int32 atomics);
  the first config of each on sm_80; float32, bfloat16, float16 and raw int32 outputs;
- every GEMV case, and every GEMM config on the ``planes`` layout (the one Triton keeps weights in
  on a GPU), on sm_90 must use no spill memory and no stack frame, as ``ptxas -v`` reports:
  the log of triton's own ptxas run (``TRITON_DUMP_PTXAS_LOG=1``: the very cubin, same flags), else
  triton's bundled ``ptxas-blackwell -arch=sm_90a -v`` on the PTX (skipped, saying so, where that
  is missing);
- ``_splitk_epilogue_kernel``, ``_absmax_quant_kernel`` for the three activation dtypes; the two
  MoLE kernels.

Nothing runs. Skipped where triton is missing or this process runs Triton's interpreter.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess

import pytest

from lmops_kernels.backends.triton import interpreting

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


def _ptxas_blackwell() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas-blackwell")


_USAGE = (
    ("registers", r"Used (\d+) registers"), ("spill_stores", r"(\d+) bytes spill stores"),
    ("spill_loads", r"(\d+) bytes spill loads"), ("stack", r"(\d+) bytes stack frame"),
)


def _parse_usage(log: str) -> dict[str, int] | None:
    """Registers, spill store/load bytes and stack frame bytes from one kernel's ``ptxas -v`` log."""
    found = {key: re.findall(pattern, log) for key, pattern in _USAGE}
    if any(len(v) != 1 for v in found.values()):
        return None
    return {key: int(v[0]) for key, v in found.items()}


def _ptxas_usage(kernel, triton_log: str, tmp_path) -> dict[str, int]:
    """``ptxas -v`` figures of an sm_90 kernel: from triton's own ptxas log when it printed one, else
    from running the bundled ``ptxas-blackwell`` on the PTX (skip when it is missing)."""
    usage = _parse_usage(triton_log)
    if usage is not None:
        return usage
    if not os.path.exists(_ptxas_blackwell()):
        pytest.skip(f"spill check skipped: triton printed no ptxas log and {_ptxas_blackwell()} is missing")
    ptx = tmp_path / "kernel.ptx"
    ptx.write_text(kernel.asm["ptx"])
    proc = subprocess.run(
        [_ptxas_blackwell(), "-arch=sm_90a", "--fmad=false", "-v", str(ptx), "-o", os.devnull],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    usage = _parse_usage(proc.stderr)
    assert usage is not None, f"no ptxas -v figures in:\n{proc.stderr[-2000:]}"
    return usage


_LAYOUTS = {"planes": 1, "tiled": 0}  # the kernels' LAYOUT constexpr


def _matmul_cases():
    from lmops_kernels.backends.triton import ternary as T

    cases = []
    for name, fn, configs, block_m in (
        ("gemv", T._w2a8_gemv_kernel, T._gemv_configs(False), 16),
        ("gemm", T._w2a8_gemm_kernel, T._gemm_configs(False), None),
    ):
        for layout in _LAYOUTS:
            for i, cfg in enumerate(configs):
                # the GEMV fused (1) and split (4: atomics into the int32 buffer, which is its output)
                for split in (1, 4) if name == "gemv" else (None,):
                    for arch in (90, 80) if i == 0 else (90,):
                        if split == 4:
                            out = "int32"
                        else:
                            out = ("bfloat16", "int32")[i % 2] if arch == 90 else "float16"
                        tag = "" if split is None else f"-split{split}"
                        case_id = f"{name}-{layout}-cfg{i}{tag}-sm{arch}-{out}"
                        cases.append(pytest.param(name, fn, cfg, block_m, layout, split, arch, out, id=case_id))
    return cases


@pytest.mark.parametrize("name,fn,cfg,block_m,layout,split,arch,out", _matmul_cases())
def test_w2a8_kernels_compile(tmp_path, monkeypatch, capsys, name, fn, cfg, block_m, layout, split, arch, out):
    epilogue = out != "int32"
    consts = {"EPILOGUE": epilogue, "HAS_BIAS": epilogue, "LAYOUT": _LAYOUTS[layout], **cfg.kwargs}
    if block_m is not None:
        consts["BLOCK_M"] = block_m  # the largest the launcher uses: the most registers
    if split is not None:
        consts["SPLIT_K"] = split
    sig = _matmul_signature("*i32" if out == "int32" else _FLOAT[out])
    # every decode config, and the prefill configs on the layout Triton keeps weights in on a GPU
    check_spills = arch == 90 and (name == "gemv" or layout == "planes")
    if check_spills:
        monkeypatch.setenv("TRITON_DUMP_PTXAS_LOG", "1")  # triton prints its ptxas -v log (cache is private)
        capsys.readouterr()
    kernel = _compile(fn, sig, consts, arch, cfg.num_warps, cfg.num_stages)
    ptx = kernel.asm["ptx"]
    if name == "gemm":
        # the int8 dot must reach the tensor cores, not a scalar loop
        assert ("wgmma" in ptx or "mma.sync" in ptx) and ".s8" in ptx, "int8 tl.dot did not lower to an int8 MMA"
    if split is not None and split > 1:
        assert "atom.global" in ptx or "red.global" in ptx, "the split GEMV must add its partial sums atomically"
    if check_spills:
        # decode streams the weights once: a spill in its loop costs more memory traffic than it moves;
        # a spilling prefill tile loses to a smaller one, so it has no place in the autotune list
        usage = _ptxas_usage(kernel, capsys.readouterr().out, tmp_path)
        assert usage["spill_stores"] == usage["spill_loads"] == usage["stack"] == 0, f"{name} {cfg}: {usage}"


@pytest.mark.parametrize("out", ["float32", "bfloat16"])
def test_splitk_epilogue_kernel_compiles(out):
    from lmops_kernels.backends.triton import ternary as T

    sig = {"acc_ptr": "*i32", "out_ptr": _FLOAT[out], "s_ptr": "*fp32", "gamma_ptr": "*fp32", "bias_ptr": "*fp32"}
    sig.update({"M": "i32", "N": "i32"})
    _compile(T._splitk_epilogue_kernel, sig, {"HAS_BIAS": True, "BLOCK_M": 16, "BLOCK_N": 256}, 90)


@pytest.mark.parametrize("dtype", list(_FLOAT))
def test_absmax_quant_kernel_compiles(dtype):
    from lmops_kernels.backends.triton import ternary as T

    sig = {"x_ptr": _FLOAT[dtype], "q_ptr": "*i8", "s_ptr": "*fp32", "K": "i32", "stride_x": "i32", "stride_q": "i32", "K_STORE": "i32"}
    _compile(T._absmax_quant_kernel, sig, {"QP": 127.0, "QN": -128.0, "BLOCK_K": 1024}, 90)


def test_mole_kernels_compile():
    from lmops_kernels.backends.triton import mole as Mo

    f32 = "*fp32"
    gate_sig = {n: f32 for n in ("z_ptr", "s_ptr", "b1_ptr", "gram_ptr", "p_ptr", "c_ptr", "d_ptr", "tau_ptr", "gates_ptr", "v_ptr")}
    gate_sig.update({"keep_ptr": "*i8", "T": "i32", "N": "i32", "R": "i32", "n_features": "fp32", "eps": "fp32"})
    _compile(Mo._gate_kernel, gate_sig, {"NORM": 0, "HAS_MASK": True, "BLOCK_T": 16, "BLOCK_R": 16, "BLOCK_N": 8}, 90)
    mix_sig = {"v_ptr": f32, "w_ptr": f32, "y_ptr": "*bf16", "T": "i32", "KR": "i32", "O": "i32"}
    _compile(Mo._mix_kernel, mix_sig, {"BLOCK_T": 64, "BLOCK_O": 64, "BLOCK_K": 32}, 90)
