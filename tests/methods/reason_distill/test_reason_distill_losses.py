"""The official trainer's losses against hand computation, the masking, and the prefix-cached encoder."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmops.methods.reason_distill import (
    last_token_states,
    rationale_representations,
    triplet_cosine_loss,
    weighted_mle_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_mle(logits, ids, lengths, prefix_lengths, w):
    total, count = 0.0, 0
    for i in range(logits.shape[0]):
        n = lengths[i]
        for j in range(n - 1):  # target ids[i, j + 1] predicted at position j
            row = [float(x) for x in logits[i, j]]
            log_z = math.log(sum(math.exp(x) for x in row))
            ce = log_z - row[int(ids[i, j + 1])]
            weight = w if j < prefix_lengths[i] else 1.0
            total += weight * ce
        count += n - 1
    return total / count


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths, prefix_lengths = [6, 4, 5], [2, 3, 1]
    ids = torch.zeros(3, 6, dtype=torch.long)
    mask = torch.zeros(3, 6, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, 7, (n,), generator=g)
        mask[i, :n] = 1
    logits = torch.randn(3, 6, 7, generator=g) * 2
    return logits, ids, mask, lengths, prefix_lengths


def test_weighted_mle_matches_hand_computation():
    logits, ids, mask, lengths, prefix_lengths = _batch()
    got = weighted_mle_loss(logits, ids, mask, torch.tensor(prefix_lengths), prefix_weight=0.1)
    want = _hand_mle(logits, ids, lengths, prefix_lengths, 0.1)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # with weight 1 it is the plain mean next-token cross-entropy over the valid targets
    plain = weighted_mle_loss(logits, ids, mask, torch.tensor(prefix_lengths), prefix_weight=1.0)
    ce = [F.cross_entropy(logits[i, : n - 1], ids[i, 1:n], reduction="sum") for i, n in enumerate(lengths)]
    assert plain.item() == pytest.approx(float(sum(ce)) / sum(n - 1 for n in lengths), rel=1e-5)
    assert got.item() < plain.item()  # the down-weighted prefix targets count fully in the denominator


def test_weighted_mle_ignores_padding_and_weights_prefix_targets():
    logits, ids, mask, lengths, prefix_lengths = _batch(1)
    logits.requires_grad_(True)
    loss = weighted_mle_loss(logits, ids, mask, torch.tensor(prefix_lengths), prefix_weight=0.1)
    loss.backward()
    grad = logits.grad
    for i, n in enumerate(lengths):
        assert torch.all(grad[i, n - 1:] == 0)  # the last real token predicts nothing; pads weigh 0
        # the gradient of a weighted CE term is w * (softmax - onehot) / count
        count = sum(m - 1 for m in lengths)
        for j in range(n - 1):
            w = 0.1 if j < prefix_lengths[i] else 1.0
            expected = w * (torch.softmax(logits[i, j].detach(), -1) - F.one_hot(ids[i, j + 1], 7)) / count
            torch.testing.assert_close(grad[i, j], expected, rtol=1e-5, atol=1e-7)
    # changing what sits in the padding changes nothing
    ids2 = ids.clone()
    ids2[1, 4:] = 3
    again = weighted_mle_loss(logits.detach(), ids2, mask, torch.tensor(prefix_lengths))
    assert again.item() == pytest.approx(loss.item())


def test_weighted_mle_rejects_bad_shapes():
    logits, ids, mask, _, _ = _batch()
    with pytest.raises(ValueError, match="logits"):
        weighted_mle_loss(logits[0], ids, mask, torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="prefix_lengths"):
        weighted_mle_loss(logits, ids, mask, torch.tensor([1, 1]))


def test_triplet_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    p = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    n = torch.tensor([[0.0, 5.0], [1.0, 0.0], [-4.0, 3.0]])
    # item 0: cos(a,n)=0, cos(a,p)=1 -> max(0, 0 - 1 + 1) = 0
    # item 1: cos(a,n)=1, cos(a,p)=0 -> 1 - 0 + 1 = 2
    # item 2: cos(a,n)=0, cos(a,p)=1 -> 0
    got = triplet_cosine_loss(a, p, n, margin=1.0)
    assert got.item() == pytest.approx(2.0 / 3, abs=1e-6)
    half = triplet_cosine_loss(a, p, n, margin=0.5)
    assert half.item() == pytest.approx(1.5 / 3, abs=1e-6)
    masked = triplet_cosine_loss(a, p, n, torch.tensor([1.0, 1.0, 0.0]), margin=1.0)
    assert masked.item() == pytest.approx(2.0 / 2, abs=1e-6)


def test_triplet_loss_equals_torch_triplet_margin_with_distance():
    g = torch.Generator().manual_seed(3)
    a, p, n = (torch.randn(9, 16, generator=g) for _ in range(3))
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 1, 1, 0], dtype=torch.float)
    ref = torch.nn.TripletMarginWithDistanceLoss(
        distance_function=lambda x, y: -F.cosine_similarity(x, y, dim=1, eps=1e-8), margin=1.0, reduction="none")
    want = (ref(a, p, n) * mask).sum() / mask.sum()
    got = triplet_cosine_loss(a, p, n, mask, margin=1.0)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # and the closed form max(0, cos(a,n) - cos(a,p) + margin)
    closed = torch.clamp(F.cosine_similarity(a, n) - F.cosine_similarity(a, p) + 1.0, min=0)
    assert got.item() == pytest.approx(((closed * mask).sum() / mask.sum()).item(), rel=1e-6)


def test_triplet_loss_masking_never_gives_nan():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 4, generator=g, requires_grad=True)
    p, n = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    none_valid = triplet_cosine_loss(a, p, n, torch.zeros(3))
    assert none_valid.item() == 0.0
    none_valid.backward()
    assert torch.isfinite(a.grad).all() and torch.all(a.grad == 0)
    # a NaN in a masked-out item is zeroed, as the official nan_to_num does
    bad = p.clone()
    bad[1] = float("nan")
    got = triplet_cosine_loss(a.detach(), bad, n, torch.tensor([1.0, 0.0, 1.0]))
    want = triplet_cosine_loss(a.detach()[[0, 2]], p[[0, 2]], n[[0, 2]])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="anchor"):
        triplet_cosine_loss(a, p[:2], n)


def test_last_token_states_picks_the_last_real_token():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = last_token_states(hidden, mask)
    torch.testing.assert_close(out, torch.stack([hidden[0, 1], hidden[1, 3]]))


def _tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


PREFIXES = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
GROUPS = [
    [[20, 21, 2], [22, 2], [23, 24, 25, 26, 2]],
    [[27, 2], [28, 29, 30, 2], [31, 2]],
    [[32, 33, 34, 2], [35, 2], [36, 37, 2]],
]


def test_prefix_cache_encoder_equals_full_forward():
    model = _tiny_llama()
    with torch.no_grad():
        cached = rationale_representations(model, PREFIXES, GROUPS, pad_id=0, prefix_cache=True)
        full = rationale_representations(model, PREFIXES, GROUPS, pad_id=0, prefix_cache=False)
        # and one unpadded forward per sequence, the ground truth
        for k, group in enumerate(GROUPS):
            for i, rat in enumerate(group):
                ids = torch.tensor([PREFIXES[i] + rat])
                h = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
                torch.testing.assert_close(cached[k][i], h, rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(full[k][i], h, rtol=1e-4, atol=1e-5)
    assert cached[0].shape == (3, 32)


def test_prefix_cache_path_has_no_gradient_through_the_prefix():
    model = _tiny_llama()
    emb = model.get_input_embeddings().weight
    grads = {}
    for cache in (True, False):
        model.zero_grad()
        reps = rationale_representations(model, PREFIXES, GROUPS, pad_id=0, prefix_cache=cache)
        triplet_cosine_loss(*reps).backward()
        grads[cache] = emb.grad.clone()
    prefix_tokens = sorted({t for p in PREFIXES for t in p})
    rationale_tokens = sorted({t for g in GROUPS for r in g for t in r})
    assert torch.all(grads[True][prefix_tokens] == 0)  # the prefix's KV cache is computed under no_grad
    assert grads[False][prefix_tokens].abs().sum() > 0
    assert grads[True][rationale_tokens].abs().sum() > 0


def test_rationale_representations_rejects_bad_groups():
    model = _tiny_llama()
    with pytest.raises(ValueError, match="groups"):
        rationale_representations(model, PREFIXES, [GROUPS[0][:2]], pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        rationale_representations(model, PREFIXES, [[[], [3], [4]]], pad_id=0)
