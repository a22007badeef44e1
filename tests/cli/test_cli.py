"""The ``lmops`` command: every verb through ``main([...])`` (bench only parsed: it is slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lmops
from lmops.cli import build_parser, main

transformers = pytest.importorskip("transformers")


def _tiny_llama_dir(path):
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert f"lmops {lmops.__version__}" in capsys.readouterr().out


def test_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "lmops", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert lmops.__version__ in proc.stdout


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_info(capsys):
    from lmops_kernels import _native, dispatch

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CPU ISA:" in out
    assert "native extension:" in out
    best = _native.cpu_features().get("best_isa")
    if best is not None:
        assert str(best) in out
    for op in dispatch.ops():
        assert op in out


def test_info_reports_forced_backend(capsys, monkeypatch):
    from lmops_kernels import dispatch

    dispatch.force("reference")
    assert main(["info"]) == 0
    assert "LMOPS_BACKEND=reference" in capsys.readouterr().out


def test_info_gpu_line(capsys, monkeypatch):
    # a visible GPU (faked: this machine has none) adds the card, the backend and layout ternary_linear
    # uses there, and marks the CUDA-tensor backend of each op with +
    import torch

    from lmops_kernels import _native, dispatch

    dispatch.force(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Fake H100")
    dispatch._AUTO_CACHE.clear()
    try:
        assert main(["info"]) == 0
        out = capsys.readouterr().out
        impl = dispatch.select("ternary_linear", "cuda")
    finally:
        dispatch._AUTO_CACHE.clear()
    assert f"GPU: Fake H100 (sm_90); ternary_linear uses {impl.backend}" in out
    assert f"weights kept in the {impl.layouts[0]!r} layout" in out
    assert "for CUDA tensors +" in out
    if not _native.with_cuda():
        assert "CUDA kernels not included" in out


def test_info_says_first_when_the_native_extension_is_missing():
    # a fresh interpreter where importing the extension fails (as if it had not been built)
    code = "import sys; from lmops.cli import main; sys.exit(main(['info']))"
    env = dict(os.environ, LMOPS_NATIVE_LIBRARY="/nonexistent/_C.so")  # as if it had not been built
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("!! WARNING: the native extension lmops_kernels._C did not load"), lines[:4]
    assert "plain-torch reference (about 100x slower)" in lines[0]
    assert lines[1].startswith("!! why: OSError: ") and "/nonexistent/_C.so" in lines[1], lines[1]
    assert lines[2].startswith("!! fix: pip install torch==2.13.0 && pip install --no-build-isolation -e .")
    assert any(line.startswith("native extension: MISSING") for line in lines)
    assert "CPU ISA: none" in proc.stdout


def test_info_without_the_warning_when_the_extension_loaded(capsys):
    from lmops_kernels import _native

    if not _native.available():
        pytest.skip(f"native extension missing: {_native.missing_reason()}")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"lmops {lmops.__version__}\n") and "!! WARNING" not in out
    assert "native extension: built" in out


def test_info_names_the_hf_extra_when_transformers_is_missing(capsys, monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name in ("transformers", "peft"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("transformers", "peft"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}:"))
        assert line.startswith(f"{name}: not installed (needed for ")
        assert line.endswith('the hf extra brings it: pip install --no-build-isolation -e ".[hf]")')


def test_demo_tiny_end_to_end(tmp_path, capsys):
    out_dir = tmp_path / "demo-model"
    assert main(["demo", "--tiny", "--steps", "3", "--out", str(out_dir)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    # stderr is not a terminal here: the training bar logs plain lines (start and end), no \r redraws
    assert "\r" not in captured.err
    bar_lines = [ln for ln in captured.err.splitlines() if ln.startswith("QAT training:")]
    assert bar_lines[0].startswith("QAT training:   0% 0/3") and bar_lines[-1].startswith("QAT training: 100% 3/3")
    assert len(bar_lines) == 2
    for text in ("packed (lmops)", "bfloat16", "decode tokens/s", "bits per byte", "latent QAT", "The return statement",
                 "ternary_linear backend:", "Saved the packed model to"):
        assert text in out, text
    assert str(out_dir.resolve()) in out
    assert (out_dir / "config.json").is_file()
    meta = json.loads((out_dir / "lmops_demo.json").read_text())
    results = meta["results"]
    assert results["bytes_packed"] * 4 < results["bytes_bf16"]
    # latent QAT and packed compute the same ternary x int8 products; measured |difference| in nats/byte:
    # 0.0 in this configuration (4 seeds), at most 6e-8 with 4096 validation bytes (6 seeds, 1 and 2
    # threads), 7.7e-7 at the default model size after 10 steps; 1e-6 is over 10x the tiny-size numbers
    assert abs(results["val_latent"] - results["val_packed"]) < 1e-6


def test_demo_saved_model_loads(tmp_path, capsys):
    from lmops import bitnet
    from lmops.bitnet import BitLinear

    import torch

    threads = torch.get_num_threads()
    out_dir = tmp_path / "m"
    assert main(["demo", "--tiny", "--steps", "2", "--threads", "1", "--out", str(out_dir)]) == 0
    assert "torch threads: 1" in capsys.readouterr().out
    assert torch.get_num_threads() == threads  # restored
    model = bitnet.from_pretrained(out_dir)
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert layers and all(m.is_packed for m in layers)


def test_demo_out_is_a_file_exit_2(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("x")
    assert main(["demo", "--tiny", "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err


def test_demo_rejects_bad_steps(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--steps", "0"])
    assert exc.value.code == 2


def test_convert_for_qat(tmp_path, capsys):
    src = _tiny_llama_dir(tmp_path / "src")
    dst = tmp_path / "dst"
    assert main(["convert", str(src), str(dst)]) == 0
    assert (dst / "config.json").is_file()
    captured = capsys.readouterr()
    assert "NOTE: packing" not in captured.err


@pytest.mark.filterwarnings("ignore")
def test_convert_pack_prints_qat_note(tmp_path, capsys):
    src = _tiny_llama_dir(tmp_path / "src")
    dst = tmp_path / "packed"
    assert main(["convert", str(src), str(dst), "--pack"]) == 0
    err = capsys.readouterr().err
    assert "NOTE: packing a model that was never trained with quantization-aware training" in err
    assert "lmops convert QAT_DIR DST --pack" in err
    assert (dst / "config.json").is_file()


def test_convert_dtype(tmp_path, capsys):
    import torch

    src = _tiny_llama_dir(tmp_path / "src")
    dst = tmp_path / "dst"
    assert main(["convert", str(src), str(dst), "--dtype", "bfloat16"]) == 0
    from safetensors.torch import load_file

    tensors = load_file(str(dst / "model.safetensors"))
    assert tensors["model.layers.0.self_attn.q_proj.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("case", ["missing", "file", "no-config"])
def test_convert_bad_src_exit_2(tmp_path, capsys, case):
    src = tmp_path / "src"
    if case == "file":
        src.write_text("not a model")
    elif case == "no-config":
        src.mkdir()
    assert main(["convert", str(src), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert str(src) in err
    assert not (tmp_path / "dst").exists()


def test_bench_arguments_parse():
    # running the benchmark is too slow for the unit tests; check the verb and its flag only
    args = build_parser().parse_args(["bench", "--quick"])
    assert args.command == "bench" and args.quick is True
    assert build_parser().parse_args(["bench"]).quick is False


def test_bench_device_cuda_without_gpu(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--device", "cuda"]) != 0
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


def test_gpu_table_format():
    # the formatting of lmops.bench.gpu rows (measured rows need a GPU; this one is written by hand)
    from lmops.bench import gpu as bench_gpu

    row = {
        "device": "NVIDIA H100 80GB HBM3", "n": 4096, "k": 4096, "m": 1, "skipped": {"triton": "not installed"},
        "graph_s": {"cublas_bf16": 20e-6, "lmops_cuda": 4e-6}, "eager_s": {"cublas_bf16": 25e-6, "lmops_cuda": 11e-6},
        "joules": {"cublas_bf16": 0.004, "lmops_cuda": 0.001}, "speedup": {"lmops_cuda": 5.0},
        "weight_gbps": {"lmops_cuda": 4096 * 4096 / 4 / 4e-6 / 1e9},
    }
    out = bench_gpu.format_gpu_table([row])
    assert "device: NVIDIA H100 80GB HBM3" in out and "skipped: lmops triton: not installed" in out
    line = [ln for ln in out.splitlines() if ln.startswith("| 4096x4096")][0]
    assert line == "| 4096x4096 | 1 | 20.0 | 4.0 (11.0) | 5.00x | 1049 | cublas_bf16 4.000 mJ, lmops_cuda 1.000 mJ |"
    assert bench_gpu.format_gpu_table([]) == "(no rows)"
