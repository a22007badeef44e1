"""load_packed: the same model as lmops.bitnet.from_pretrained, built without float projection weights;
peak resident memory of load + generate stays within the checkpoint's bytes + KV cache + 300 MiB."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lmops import bitnet
from lmops.engine import generate, load_packed
from tiny_models import random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _save_packed(path, arch, **convert_kwargs):
    model = tiny_model(arch, seed=2)
    bitnet.pack(bitnet.convert(model, **convert_kwargs))
    model.generation_config.eos_token_id = 5
    bitnet.save_pretrained(model, path)
    return path


@pytest.mark.parametrize("arch, convert_kwargs", [
    ("llama", {}),  # tied embeddings
    ("qwen2", {}),  # q/k/v biases
    ("bitnet", {"rms_norm": True}),  # sub-norms and BitLinear input norms
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_model_as_from_pretrained(tmp_path, arch, convert_kwargs, dtype):
    path = _save_packed(tmp_path / arch, arch, **convert_kwargs)
    ours, ref = load_packed(path, dtype=dtype), bitnet.from_pretrained(path, dtype=dtype)
    assert type(ours) is type(ref) and not ours.training
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert not any(t.is_meta for t in list(ours.parameters()) + list(ours.buffers()))
    for name in ("inv_freq", "original_inv_freq"):
        assert torch.equal(getattr(ours.model.rotary_emb, name), getattr(ref.model.rotary_emb, name))
    if arch == "llama":
        assert ours.lm_head.weight is ours.model.embed_tokens.weight
    assert bitnet.conversion_record(ours)["packed"] and ours.generation_config.eos_token_id == 5
    ids = random_ids(2, 7, seed=4)
    assert torch.equal(generate(ours, ids, max_new_tokens=12), generate(ref, ids, max_new_tokens=12))


def test_refuses_what_it_cannot_read(tmp_path):
    qat = tiny_model("llama")
    bitnet.convert(qat)
    bitnet.save_pretrained(qat, tmp_path / "qat")
    with pytest.raises(ValueError, match="not packed"):
        load_packed(tmp_path / "qat")
    plain = tiny_model("llama")
    plain.save_pretrained(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="lmops.bitnet"):
        load_packed(tmp_path / "plain")
    with pytest.raises(FileNotFoundError):
        load_packed(tmp_path / "nowhere")
    # a tensor of the wrong shape, and one missing
    path = _save_packed(tmp_path / "bad", "llama")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(path / "model.safetensors"))
    sd["model.norm.weight"] = torch.ones(3)
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="model.norm.weight"):
        load_packed(path)
    del sd["model.norm.weight"]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        load_packed(path)


# A 247M-parameter Llama (hidden 1024, FFN 2816, 16 layers, 16/4 heads, vocab 32000, untied): its 181M
# projection weights would take 345 MiB in bfloat16, more than the 300 MiB allowance, so materializing
# them cannot pass; the packed checkpoint is ~168 MiB (43 of them projections) and writes in seconds.
_SHAPE = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
              num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=256)


def _write_synthetic_packed(root: Path) -> int:
    """A packed lmops directory with random ternary weights (written directly, no float model); returns
    its tensor bytes."""
    import lmops_kernels as lk
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    cfg = LlamaConfig(**_SHAPE)
    h, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (cfg.hidden_size // 16)
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (f, h), "mlp.up_proj": (f, h), "mlp.down_proj": (h, f)}
    g = torch.Generator().manual_seed(0)
    sd, modules = {}, []
    for i in range(cfg.num_hidden_layers):
        for name, shape in shapes.items():
            full = f"model.layers.{i}.{name}"
            modules.append(full)
            sd[f"{full}.weight_packed"] = lk.pack_ternary(torch.randint(-1, 2, shape, generator=g, dtype=torch.int8))
            sd[f"{full}.weight_scale"] = torch.tensor([0.02])
        for norm in ("input_layernorm", "post_attention_layernorm"):
            sd[f"model.layers.{i}.{norm}.weight"] = torch.ones(h, dtype=torch.bfloat16)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        sd[key] = (torch.randn(cfg.vocab_size, h, generator=g) * 0.02).to(torch.bfloat16)
    sd["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    root.mkdir()
    save_file(sd, str(root / "model.safetensors"), metadata={"format": "pt"})
    config = cfg.to_dict()
    config["lmops"] = {"bitnet": {"format": bitnet.FORMAT_NAME, "version": bitnet.FORMAT_VERSION,
                                  "layout": bitnet.PACKED_LAYOUT, "exclude": ["lm_head"], "rms_norm": False,
                                  "rms_norm_eps": 1e-6, "packed": True, "modules": sorted(modules), "tied": {}}}
    (root / "config.json").write_text(json.dumps(config))
    return sum(t.numel() * t.element_size() for t in sd.values())


_CHILD = textwrap.dedent("""
    import json, sys, torch
    import lmops.bitnet, lmops.engine, transformers.models.llama.modeling_llama  # imports are not the load's
    torch.set_num_threads(1)
    def status(field):  # VmHWM: this process's peak resident set (ru_maxrss carries the parent's across exec)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
    def peak():
        return status("VmHWM")
    before = status("VmRSS")  # resident now (the imports' own transient peak does not count)
    load = lmops.engine.load_packed if sys.argv[2] == "load_packed" else lmops.bitnet.from_pretrained
    model = load(sys.argv[1], dtype=torch.bfloat16)
    loaded = status("VmRSS")
    ids = torch.randint(3, 32000, (1, 32), generator=torch.Generator().manual_seed(0))
    out = lmops.engine.generate(model, ids, max_new_tokens=16, eos_token_id=[])
    packed = sum(type(m).__name__ == "BitLinear" and m.is_packed for m in model.modules())
    print(json.dumps({"before": before, "loaded": loaded, "generated": peak(), "tokens": out.shape[1],
                      "packed": packed}))
""")


def _peak_growth(root: Path, loader: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(root), loader], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["packed"] == 7 * _SHAPE["num_hidden_layers"] and got["tokens"] == 48
    return got


@pytest.fixture(scope="module")
def synthetic_packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("rss") / "m"
    return root, _write_synthetic_packed(root)


def _budget(nbytes: int) -> int:
    layers, kv_heads, head_dim = _SHAPE["num_hidden_layers"], _SHAPE["num_key_value_heads"], 64
    kv_cache = 2 * layers * 1 * kv_heads * 47 * head_dim * 2  # keys + values, B=1, 47 slots, bf16
    return nbytes + kv_cache + 300 * 2**20


_LINUX = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc (Linux)")


@_LINUX
def test_peak_memory_of_load_and_generate_stays_near_the_checkpoint(synthetic_packed):
    root, nbytes = synthetic_packed
    got = _peak_growth(root, "load_packed")
    grew, budget = got["generated"] - got["before"], _budget(nbytes)
    assert grew <= budget, f"peak RSS grew {grew / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
    # the measurement sees the weights at all: generating reads every projection and the whole head
    # (safetensors maps the file; weights enter the resident set as they are first read)
    head = _SHAPE["vocab_size"] * _SHAPE["hidden_size"] * 2
    assert grew >= 0.8 * (nbytes - head)
    print(f"load_packed + generate: peak RSS grew {grew / 2**20:.0f} MiB for a {nbytes / 2**20:.0f} MiB checkpoint")


@pytest.mark.slow
@_LINUX
def test_bitnet_from_pretrained_of_a_packed_directory_fits_the_same_budget(synthetic_packed):
    """lmops.bitnet.from_pretrained hands packed lmops directories to load_packed. Before it did, it
    allocated the float model and copied a whole state_dict into it (measured 2026-11-29: +449 MiB of
    peak RSS for this 168 MiB checkpoint, load_packed +168 MiB)."""
    root, nbytes = synthetic_packed
    got = _peak_growth(root, "from_pretrained")
    grew, budget = got["generated"] - got["before"], _budget(nbytes)
    print(f"from_pretrained + generate: peak RSS grew {grew / 2**20:.0f} MiB for a {nbytes / 2**20:.0f} MiB checkpoint")
    assert grew <= budget, f"peak RSS grew {grew / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
