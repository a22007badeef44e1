"""``lmops generate``: loads a directory (packed through load_packed), prints the greedy continuation that
model.generate gives and the prefill/decode speed; sampling is seeded; user errors exit 2."""

import re

import pytest
import torch

from lmops import bitnet
from lmops.cli import main
from lmops.common.offline_tokenizer import byte_level_tokenizer
from tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "The cat sat"


def _save(path, packed: bool):
    tok = byte_level_tokenizer()
    model = tiny_model("qwen2", seed=7, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    if packed:
        bitnet.pack(bitnet.convert(model))
        bitnet.save_pretrained(model, path, tokenizer=tok)
    else:
        model.save_pretrained(str(path))
        tok.save_pretrained(str(path))
    return path


def _reference(path, packed: bool, n: int) -> str:
    from transformers import AutoModelForCausalLM

    tok = byte_level_tokenizer()
    if packed:
        model = bitnet.from_pretrained(path, dtype=torch.bfloat16)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return PROMPT + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _run(capsys, *argv):
    code = main(["generate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "plain"])
def test_prints_the_greedy_text_and_speeds(tmp_path, capsys, packed):
    path = _save(tmp_path / "m", packed)
    code, out, _ = _run(capsys, path, "--prompt", PROMPT, "--max-new-tokens", 9, "--threads", 1)
    assert code == 0
    text, stats = out.rsplit("\n\n", 1)
    assert text == _reference(path, packed, 9)
    assert re.search(r"prefill: \d+ tokens in [\d.]+ s \([\d.]+ tok/s", stats)
    assert re.search(r"decode: \d+ tokens in [\d.]+ s \([\d.]+ tok/s\), threads=1, dtype=bfloat16", stats)


def test_sampling_is_seeded(tmp_path, capsys):
    path = _save(tmp_path / "m", True)
    args = (path, "--prompt", PROMPT, "--max-new-tokens", 12, "--sample", "--temperature", 1.5, "--top-p", 0.95)
    texts = []
    for seed in (1, 1, 2):
        code, out, _ = _run(capsys, *args, "--seed", seed)
        assert code == 0
        texts.append(out.rsplit("\n\n", 1)[0])
    assert texts[0] == texts[1] != texts[2]


def test_user_errors_exit_2(tmp_path, capsys):
    code, _, err = _run(capsys, tmp_path / "missing", "--prompt", "x")
    assert code == 2 and "MODEL_DIR" in err
    path = _save(tmp_path / "m", True)
    code, _, err = _run(capsys, path, "--prompt", "x", "--top-p", 1.5)
    assert code == 2 and "--top-p" in err
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = byte_level_tokenizer()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=32))
    gpt2.save_pretrained(str(tmp_path / "gpt2"))
    tok.save_pretrained(str(tmp_path / "gpt2"))
    code, _, err = _run(capsys, tmp_path / "gpt2", "--prompt", "x")
    assert code == 2 and "GPT2LMHeadModel" in err and "LlamaForCausalLM" in err


def test_threads_auto_and_the_int8_head(tmp_path, capsys):
    path = _save(tmp_path / "m", True)
    code, out, _ = _run(capsys, path, "--prompt", PROMPT, "--max-new-tokens", 9, "--threads", "auto")
    assert code == 0
    text, stats = out.rsplit("\n\n", 1)
    assert text == _reference(path, True, 9)  # the thread count never changes the tokens
    assert "threads=auto" in stats and "head=model" in stats
    code, out, _ = _run(capsys, path, "--prompt", PROMPT, "--max-new-tokens", 9, "--head-dtype", "int8")
    assert code == 0 and "head=int8" in out
    with pytest.raises(SystemExit):
        main(["generate", str(path), "--prompt", "x", "--threads", "many"])
