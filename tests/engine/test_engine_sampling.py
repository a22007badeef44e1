"""Sampling: the warpers filter exactly as transformers' do, draws are reproducible with a generator,
the distribution is the tempered softmax over the kept tokens, and arguments are checked."""

import math

import pytest
import torch

from engine_cases import family_model, padded_batch, reference
from lmops.engine import Sampler, generate
from tiny_models import random_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("temperature, top_k, top_p", [
    (1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (0.5, 17, 0.6), (2.0, 1, 0.99), (1.0, 200, 0.3),
])
def test_warpers_filter_as_transformers(temperature, top_k, top_p):
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 131, generator=g) * 3
    scores[1, 7] = scores[1, 9] = scores[1].max() + 1  # a tie at the top
    hf = LogitsProcessorList()
    if temperature != 1.0:
        hf.append(TemperatureLogitsWarper(temperature))
    if top_k:
        hf.append(TopKLogitsWarper(top_k))
    if top_p is not None:
        hf.append(TopPLogitsWarper(top_p))
    ours = Sampler(True, temperature, top_k, top_p).warp(scores.clone())
    assert torch.equal(ours, hf(None, scores.clone()))


def test_generator_makes_draws_reproducible_and_seeds_differ():
    model = family_model("qwen2", packed=True)
    ids, mask = padded_batch(2)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, ids, attention_mask=mask, max_new_tokens=12, do_sample=True, temperature=1.5,
                        top_p=0.95, generator=g, eos_token_id=[])

    a, b, c = draw(1), draw(1), draw(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = generate(model, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    assert not torch.equal(a, greedy)  # a random model at temperature 1.5 does not sample its argmax


def test_same_draws_as_generate_under_one_global_seed():
    """Not required (HF's RNG stream is its own business), but the engine draws exactly as model.generate:
    same warpers, same softmax, one multinomial per step from the global generator."""
    model = family_model("llama", packed=True)
    ids, mask = padded_batch(1)
    for kwargs in ({"temperature": 0.8, "top_k": 20, "top_p": 0.9}, {"temperature": 1.2, "top_k": 0}):
        torch.manual_seed(3)
        ref = reference(model, ids, mask, 16, do_sample=True, **kwargs).sequences
        torch.manual_seed(3)
        kwargs = {**kwargs, "top_k": kwargs["top_k"] or None}
        assert torch.equal(generate(model, ids, attention_mask=mask, max_new_tokens=16, pad_token_id=0,
                                    do_sample=True, **kwargs), ref)


def test_distribution_is_the_tempered_softmax_of_the_kept_tokens():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 20000
    g = torch.Generator().manual_seed(0)
    for temperature, top_k, top_p in [(1.0, None, None), (0.5, None, None), (1.0, 3, None), (1.0, None, 0.7)]:
        sampler = Sampler(True, temperature, top_k, top_p, g)
        draws = sampler(logits.expand(n, -1).contiguous())
        freq = torch.bincount(draws, minlength=6).float() / n
        kept = torch.ones(6, dtype=torch.bool)
        if top_k:
            kept[top_k:] = False
        if top_p is not None:  # smallest prefix of the sorted probabilities reaching top_p
            p = torch.softmax(logits[0] / temperature, -1)
            kept = torch.cumsum(p, 0) - p < top_p
        want = torch.softmax((logits[0] / temperature).masked_fill(~kept, -math.inf), -1)
        assert float((freq - want).abs().max()) < 0.015, (temperature, top_k, top_p, freq, want)
        assert freq[~kept].sum() == 0


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = family_model("bitnet", packed=True)
    ids = random_ids(2, 6, seed=4)
    greedy = generate(model, ids, max_new_tokens=10, eos_token_id=[])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(generate(model, ids, max_new_tokens=10, do_sample=True, top_k=1, generator=g,
                                eos_token_id=[]), greedy)
    assert torch.equal(generate(model, ids, max_new_tokens=10, do_sample=True, top_p=1e-6, generator=g,
                                eos_token_id=[]), greedy)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"temperature": 0.0}, ValueError, "temperature"),
    ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"top_k": -1}, ValueError, "top_k"),
    ({"top_k": 2.5}, ValueError, "top_k"),
    ({"top_p": 0.0}, ValueError, "top_p"),
    ({"top_p": 1.5}, ValueError, "top_p"),
    ({"do_sample": "yes"}, TypeError, "do_sample"),
    ({"generator": 3}, TypeError, "generator"),
])
def test_bad_sampling_arguments(kwargs, error, match):
    model = family_model("llama")
    with pytest.raises(error, match=match):
        generate(model, random_ids(1, 4), max_new_tokens=2, **kwargs)
