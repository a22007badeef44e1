"""What the engine refuses, and how it says so; the engine kept per model follows the model's changes."""

import pytest
import torch

from engine_cases import family_model, padded_batch
from lmops import bitnet
from lmops.engine import UnsupportedModelError, engine_for, generate, supported_classes, supports
from tiny_models import random_ids

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unsupported_architecture_names_the_class_and_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    assert not supports(gpt2)
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel") as err:
        generate(gpt2, random_ids(1, 4) % 64, max_new_tokens=2)
    for name in supported_classes():
        assert name in str(err.value)
    assert isinstance(err.value, TypeError)
    assert set(supported_classes()) == {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                        "BitNetForCausalLM"}


def test_unsupported_attention_implementation():
    model = family_model("llama")
    model.config._attn_implementation = "flex_attention"
    assert not supports(model)
    with pytest.raises(UnsupportedModelError, match="flex_attention"):
        generate(model, random_ids(1, 4), max_new_tokens=2)


@pytest.mark.parametrize("make, error, match", [
    (lambda ids, mask: dict(input_ids=ids.float()), TypeError, "input_ids"),
    (lambda ids, mask: dict(input_ids=ids[0]), TypeError, "input_ids"),
    (lambda ids, mask: dict(input_ids=ids[:, :0]), ValueError, "input_ids"),
    (lambda ids, mask: dict(attention_mask=mask[:, 1:]), ValueError, "attention_mask"),
    (lambda ids, mask: dict(attention_mask=mask * 2), ValueError, "0/1"),
    (lambda ids, mask: dict(attention_mask=mask.flip(-1)), ValueError, "left padding"),
    (lambda ids, mask: dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (lambda ids, mask: dict(eos_token_id="2"), ValueError, "eos_token_id"),
    (lambda ids, mask: dict(pad_token_id=-1), ValueError, "pad_token_id"),
    (lambda ids, mask: dict(on_step=3), TypeError, "on_step"),
])
def test_bad_inputs(make, error, match):
    model = family_model("qwen2")
    ids, mask = padded_batch(1)
    kwargs = {"input_ids": ids, "attention_mask": mask, "max_new_tokens": 3, **make(ids, mask)}
    with pytest.raises(error, match=match):
        generate(model, **kwargs)


def test_warns_about_processors_it_does_not_apply():
    model = family_model("mistral")
    model.generation_config.repetition_penalty = 1.3
    with pytest.warns(UserWarning, match="repetition_penalty"):
        generate(model, random_ids(1, 4), max_new_tokens=2)


def test_the_kept_engine_follows_model_changes():
    model = family_model("llama")
    first = engine_for(model)
    assert engine_for(model) is first
    ids = random_ids(2, 6, seed=9)
    bitnet.pack(bitnet.convert(model))  # every projection swapped: a new plan
    engine = engine_for(model)
    assert engine is not first and isinstance(engine.plan.layers[0].proj.q, bitnet.BitLinear)
    scores = []
    packed = generate(model, ids, max_new_tokens=8, eos_token_id=[], on_step=lambda s, sc, t: scores.append(sc))
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None,
                             output_logits=True, return_dict_in_generate=True)
    assert torch.equal(packed, ref.sequences) and all(torch.equal(a, b) for a, b in zip(scores, ref.logits))
    model.to(torch.bfloat16)  # a new dtype: a new cache dtype
    assert engine_for(model).dtype == torch.bfloat16
