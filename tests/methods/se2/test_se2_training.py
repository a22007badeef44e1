"""Se2 retriever training data (positives, hard and random negatives), the loss, the best-valid checkpoint,
the dual encoder's tokenization, and saving/loading with save_pretrained/from_pretrained."""

import pytest
import torch
import torch.nn.functional as F

from lmops.methods.se2 import (
    Candidate,
    DualEncoder,
    Example,
    Pool,
    ScoredRecord,
    Template,
    TrainConfig,
    biencoder_loss,
    make_training_samples,
    query_text,
    tiny_dual_encoder,
    train_retriever,
)
from lmops.methods.se2.training import _valid_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _pool(n=40):
    return Pool([Example(i, f"item {i}", options=["a", "b"], gold=i % 2) for i in range(n)])


def _record(qid, ranked, accs, chosen=()):
    return ScoredRecord(qid, list(chosen), [Candidate(c, 0.01 * k, a) for k, (c, a) in enumerate(zip(ranked, accs))])


def test_positive_is_best_ranked_right_candidate_and_hard_negatives_are_the_tail():
    pool = _pool()
    ranked = [10, 11, 12, 13, 14, 15, 16, 17]
    accs = [0, 1, 1, 0, 0, 0, 0, 0]  # the top-ranked candidate is wrong: the positive is the second
    rec = _record(0, ranked, accs, chosen=[30, 31])
    none_right = _record(1, ranked, [0] * 8)
    samples = make_training_samples([rec, none_right], pool, {q.id: q for q in pool.examples},
                                    n_hard_negatives=3, n_random_negatives=50, seed=0)
    assert len(samples) == 1  # the record without a right candidate is dropped
    s = samples[0]
    assert s.positive == 11
    assert s.hard_negatives == [15, 16, 17]
    assert s.query == query_text(pool, Template(), [30, 31], pool[0]) == "item 30 a \n item 31 b \n item 0"
    # random negatives: with replacement (50 from 36 ids must repeat), never the positive or a hard negative
    assert len(s.random_negatives) == 50 and len(set(s.random_negatives)) < 50
    assert not {11, 15, 16, 17} & set(s.random_negatives)


def test_positive_is_never_also_a_hard_negative():
    pool = _pool()
    rec = _record(0, [5, 6, 7], [0, 0, 1])  # the only right candidate is ranked last
    [s] = make_training_samples([rec], pool, {0: pool[0]}, n_hard_negatives=20, n_random_negatives=0)
    assert s.positive == 7 and s.hard_negatives == [5, 6] and s.random_negatives == []


def test_biencoder_loss_is_cross_entropy_over_all_contexts_of_the_batch():
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(3, 5, generator=g), torch.randn(7, 5, generator=g)
    pos = torch.tensor([0, 3, 5])
    manual = -torch.stack([torch.log_softmax(q[i] @ c.T, 0)[pos[i]] for i in range(3)]).mean()
    assert biencoder_loss(q, c, pos).item() == pytest.approx(manual.item(), rel=1e-6)
    assert biencoder_loss(q, c, pos).item() == pytest.approx(F.cross_entropy(q @ c.T, pos).item(), rel=1e-6)


def test_tokenize_puts_cls_first_and_keeps_the_end_of_long_queries():
    enc = tiny_dual_encoder(0)
    tok = enc.tokenizer
    batch = enc.tokenize(["abcdefgh", "xy"], 5, keep_end=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, 5) and ids[:, 0].tolist() == [tok.cls_token_id] * 2
    assert tok.decode(ids[0, 1:].tolist()) == "efgh"  # a too-long query keeps its end (the query input)
    assert mask[1].tolist() == [1, 1, 1, 0, 0] and ids[1, 3:].tolist() == [tok.pad_token_id] * 2
    head = enc.tokenize(["abcdefgh"], 5, keep_end=False)["input_ids"]
    assert tok.decode(head[0, 1:].tolist()) == "abcd"


class _BertLikeTokenizer:
    """Adds [CLS] ... [SEP] like BERT's tokenizer (ids: cls 101, sep 102, pad 0)."""

    cls_token_id, sep_token_id, pad_token_id = 101, 102, 0

    def __call__(self, texts, add_special_tokens=True, truncation=False):
        return {"input_ids": [[101] + [ord(ch) for ch in t] + [102] for t in texts]}


def test_tokenize_keeps_a_tokenizers_own_cls_and_sep_when_truncating():
    enc = DualEncoder(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), _BertLikeTokenizer())
    ids = enc.tokenize(["abcdef"], 5, keep_end=True)["input_ids"][0].tolist()
    assert ids == [101, ord("d"), ord("e"), ord("f"), 102]
    ids = enc.tokenize(["abcdef"], 5, keep_end=False)["input_ids"][0].tolist()
    assert ids == [101, ord("a"), ord("b"), ord("c"), 102]


def test_save_and_load_round_trip(tmp_path):
    enc = tiny_dual_encoder(3)
    enc.template = Template(question_format="Q: {question}", answer_format=" A: {answer}")
    texts = ["hello there", "another text \n with a newline"]
    before_q, before_c = enc.encode_queries(texts), enc.encode_contexts(texts)
    enc.save_pretrained(tmp_path / "ret", extra={"note": 1})
    assert (tmp_path / "ret" / "query_encoder" / "model.safetensors").is_file()
    loaded = DualEncoder.from_pretrained(tmp_path / "ret")
    torch.testing.assert_close(loaded.encode_queries(texts), before_q)
    torch.testing.assert_close(loaded.encode_contexts(texts), before_c)
    assert loaded.template == enc.template and loaded.max_query_length == enc.max_query_length
    assert not torch.equal(before_q, before_c)  # two separate encoders
    with pytest.raises(FileNotFoundError, match="se2_retriever.json"):
        DualEncoder.from_pretrained(tmp_path)


def test_from_encoder_loads_two_independent_copies(tmp_path):
    enc = tiny_dual_encoder(1)
    enc.query_encoder.save_pretrained(tmp_path / "bert")
    enc.tokenizer.save_pretrained(tmp_path / "bert")
    dual = DualEncoder.from_encoder(tmp_path / "bert", max_query_length=64)
    assert dual.query_encoder is not dual.context_encoder
    torch.testing.assert_close(dual.encode_queries(["abc"]), dual.encode_contexts(["abc"]))
    with torch.no_grad():
        next(dual.query_encoder.parameters()).add_(1.0)
    assert not torch.equal(next(dual.query_encoder.parameters()), next(dual.context_encoder.parameters()))


def test_training_keeps_the_best_validation_weights_and_learns_a_planted_match():
    # pool items "k<i>" and queries "k<i>": the positive for query i is pool item i (same text)
    pool = Pool([Example(i, f"k{i}{i}", options=["a", "b"], gold=0) for i in range(24)])
    queries = [Example(100 + i, f"k{i}{i}", options=["a", "b"], gold=0) for i in range(24)]
    recs = [_record(100 + i, [i, (i + 5) % 24, (i + 9) % 24], [1, 0, 0]) for i in range(24)]
    enc = tiny_dual_encoder(0)
    cfg = TrainConfig(lr=3e-3, epochs=6, batch_size=8, warmup_steps=2, n_hard_negatives=2, n_random_negatives=2)
    report = train_retriever(enc, recs[:18], recs[18:], pool, queries, cfg, progress=False)
    assert report.n_train == 18 and report.n_valid == 6 and len(report.valid_loss) == 6
    assert report.best_epoch == min(range(6), key=report.valid_loss.__getitem__)
    assert report.train_loss[-1] < report.train_loss[0]
    from lmops.methods.se2.training import make_training_samples as mk

    valid = mk(recs[18:], pool, {q.id: q for q in queries}, template=enc.template, n_hard_negatives=2,
               n_random_negatives=2, seed=cfg.seed + 1)
    pool_texts = dict(zip(pool.ids, pool.texts(enc.template)))
    assert _valid_loss(enc, pool_texts, valid, 16) == pytest.approx(min(report.valid_loss), rel=1e-5)
    with pytest.raises(ValueError, match="positive"):
        train_retriever(enc, [_record(100, [1, 2], [0, 0])], [], pool, queries, cfg, progress=False)
    with pytest.raises(ValueError, match="queries"):
        train_retriever(enc, recs, [], pool, queries[:3], cfg, progress=False)
