"""GLAN's response-only SFT: exact label masking, the loss (only response tokens), training that lowers
it on a tiny Llama, adapters (LoRA trains only its parameters; ResLoRA), saving and the CLI path through
``from_pretrained``."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmops.common.offline_tokenizer import byte_level_tokenizer
from lmops.methods.glan import SFTConfig
from lmops.methods.glan.sft import (
    IGNORE_INDEX,
    build_example,
    build_examples,
    collate,
    plain_template,
    response_loss,
    save_sft,
    train_sft,
)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # peft asks transformers 5 the deprecated is_gradient_checkpointing; not this package's warning
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

PAIRS = [
    {"question": "What is 2+2?", "answer": "4, because two plus two is four."},
    {"question": "Name a prime.", "answer": "7 is a prime number."},
    {"question": "Color of the sky?", "answer": "Blue on a clear day."},
    {"question": "Opposite of hot?", "answer": "Cold is the opposite."},
]


def _ids(text):
    return [7 + b for b in text.encode("utf-8")]  # byte_level_tokenizer: byte b -> id 7 + b


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=263, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def test_labels_mask_the_prompt_exactly():
    tok = byte_level_tokenizer(padding_side="right")
    ex = build_example(tok, "Hi?", "Yo")
    prompt = "### Instruction:\nHi?\n\n### Response:\n"
    assert plain_template("Hi?") == prompt
    assert ex.input_ids == _ids(prompt) + _ids("Yo") + [2]
    assert ex.labels == [IGNORE_INDEX] * len(_ids(prompt)) + _ids("Yo") + [2]
    assert ex.n_response == 3
    # a long response is cut at the end; a prompt that fills max_length leaves no example
    cut = build_example(tok, "Hi?", "Yo there", max_length=len(prompt) + 4)
    assert cut.labels[len(prompt):] == _ids("Yo t") and len(cut.input_ids) == len(prompt) + 4
    assert build_example(tok, "Hi?", "Yo", max_length=len(prompt)) is None
    exs, skipped = build_examples(tok, PAIRS + [{"question": "x" * 500, "answer": "y"}], max_length=300)
    assert len(exs) == 4 and skipped == 1
    with pytest.raises(ValueError, match=r"pairs\[0\]"):
        build_examples(tok, [{"question": "q"}])


def test_chat_template_prompt_and_response():
    tok = byte_level_tokenizer(padding_side="right")
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    ex = build_example(tok, "Q?", "A.")
    assert ex.input_ids == _ids("<user>Q?</user><assistant>") + _ids("A.</assistant>")
    assert ex.labels == [IGNORE_INDEX] * len(_ids("<user>Q?</user><assistant>")) + _ids("A.</assistant>")
    plain = build_example(tok, "Q?", "A.", template="plain")
    assert plain.input_ids[: len(_ids("### Instruction"))] == _ids("### Instruction")
    with pytest.raises(ValueError, match="no chat template"):
        build_example(byte_level_tokenizer(), "Q", "A", template="chat")


def test_collate_and_response_only_loss():
    tok = byte_level_tokenizer(padding_side="right")
    exs, _ = build_examples(tok, PAIRS[:2])
    batch = collate(exs, pad_id=0)
    n0, n1 = len(exs[0].input_ids), len(exs[1].input_ids)
    assert batch["input_ids"].shape == (2, max(n0, n1))
    short = 0 if n0 < n1 else 1
    assert (batch["labels"][short, min(n0, n1):] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum().item() == n0 + n1
    model = tiny_llama().eval()
    with torch.no_grad():
        loss_sum, n = response_loss(model, batch)
        assert n == exs[0].n_response + exs[1].n_response
        # the same as transformers' own loss, which averages over the labelled tokens
        ref = model(**batch).loss
        torch.testing.assert_close(loss_sum / n, ref, rtol=1e-5, atol=1e-5)
        # changing the prompt's labels to the tokens themselves would change it: prompts are excluded
        full = dict(batch, labels=torch.where(batch["attention_mask"] == 1, batch["input_ids"], IGNORE_INDEX))
        assert response_loss(model, full)[1] > n


def test_training_lowers_the_response_loss():
    tok = byte_level_tokenizer(padding_side="right")
    cfg = SFTConfig(epochs=30, lr=1e-2, batch_size=4, warmup_steps=2, max_grad_norm=1.0)
    _, res = train_sft(tiny_llama(), tok, PAIRS, cfg, progress=False)
    assert res.steps == 30 and len(res.losses) == 30 and res.n_examples == 4
    assert res.trainable_params == res.total_params
    assert sum(res.losses[-3:]) / 3 < 0.6 * sum(res.losses[:3]) / 3, res.losses
    # gradient accumulation: 2 micro-batches of 2 per step
    _, res2 = train_sft(tiny_llama(), tok, PAIRS, SFTConfig(epochs=2, batch_size=2, grad_accum=2, lr=1e-3),
                        progress=False)
    assert res2.steps == 2


def test_lora_trains_only_adapter_parameters(tmp_path):
    pytest.importorskip("peft")
    tok = byte_level_tokenizer(padding_side="right")
    base = tiny_llama()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = SFTConfig(epochs=3, lr=1e-2, batch_size=4, adapter="lora", lora_r=4, target_modules=("q_proj", "v_proj"))
    model, res = train_sft(base, tok, PAIRS, cfg, progress=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert res.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad) < res.total_params / 5
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: it moved
    for name, p in model.get_base_model().named_parameters():
        if "lora_" not in name:
            key = name.replace("base_layer.", "")
            torch.testing.assert_close(p, before[key], rtol=0, atol=0)
    out = save_sft(model, tok, tmp_path / "lora", cfg, res, base_model="tiny")
    assert (out / "adapter_config.json").is_file() and (out / "glan_sft.json").is_file()
    assert json.loads((out / "glan_sft.json").read_text())["result"]["steps"] == res.steps


def test_reslora_adapter_trains(tmp_path):
    tok = byte_level_tokenizer(padding_side="right")
    cfg = SFTConfig(epochs=2, lr=1e-2, batch_size=4, adapter="reslora", lora_r=4, reslora_structure="is")
    model, res = train_sft(tiny_llama(), tok, PAIRS, cfg, progress=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    out = save_sft(model, tok, tmp_path / "res", cfg, res)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()


def test_cli_sft_from_pretrained(tmp_path):
    from lmops.cli import main

    tok = byte_level_tokenizer(padding_side="right")
    src = tmp_path / "base"
    tiny_llama().save_pretrained(src)
    tok.save_pretrained(src)
    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    out = tmp_path / "out"
    rc = main(["glan", "sft", "--data", str(data), "--model", str(src), "--out", str(out), "--max-steps", "2",
               "--batch-size", "2", "--lr", "1e-3", "--quiet"])
    assert rc == 0 and (out / "config.json").is_file()
    again = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert json.loads((out / "glan_sft.json").read_text())["base_model"] == str(src)
    assert again.config.vocab_size == 263
    rc = main(["glan", "sft", "--data", str(data), "--model", str(src), "--out", str(tmp_path / "lo"), "--lora",
               "--max-steps", "1", "--quiet"])
    assert rc == 0 and (tmp_path / "lo" / "adapter_config.json").is_file()
    assert main(["glan", "sft", "--data", str(tmp_path / "none.jsonl"), "--model", str(src), "--out", str(out)]) == 2
