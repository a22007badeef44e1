"""Se2 end to end: the offline demo (Se2 must beat random by a margin and match or beat BM25 on a task with a
planted best sequence), the shipped demo data, and the CLI (score -> train -> select) with the scripted LLM."""

import json

import pytest

from lmops.cli import main
from lmops.methods.se2 import (
    SEPARATOR,
    Example,
    demo_task,
    load_demo_task,
    run_demo,
    tiny_dual_encoder,
)
from lmops.methods.se2 import demo as demo_mod
from lmops.methods.se2.data import read_examples

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_se2_beats_random_and_bm25():
    result = run_demo(0, log=None)
    assert result.se2 >= result.random + 0.4, result
    assert result.se2 >= result.bm25, result
    assert result.se2 >= 0.9, result


def test_shipped_demo_data_is_the_generator_at_seed_0():
    pool, test = load_demo_task()
    gen_pool, gen_test = demo_task(0)
    assert pool == gen_pool and test == gen_test
    assert len({e.id for e in pool + test}) == len(pool) + len(test)


def test_scripted_llm_plants_the_best_sequence():
    pool, test = demo_task(0)
    q = test[0]
    topic = demo_mod.topic_of(q.question)
    same = [e for e in pool if demo_mod.topic_of(e.question) == topic][:3]
    other = [e for e in pool if demo_mod.topic_of(e.question) != topic][:3]
    llm = demo_mod.scripted_llm()

    def gold_nll(demos):
        ctx = SEPARATOR.join([d.question + " " + d.answer for d in demos] + [q.question])
        lp, n = llm.loglikelihood([ctx], [" " + q.answer])[0]
        return -lp / n

    assert gold_nll(same) < gold_nll([same[0], same[1], other[0]]) < gold_nll(other)  # nearest counts most
    assert gold_nll([other[0], other[1], same[0]]) < gold_nll([same[0], other[0], other[1]])


def _write_encoder(path):
    enc = tiny_dual_encoder(0)
    enc.query_encoder.save_pretrained(path)
    enc.tokenizer.save_pretrained(path)
    return path


def test_cli_score_train_select_end_to_end(tmp_path, capsys, monkeypatch):
    root = demo_mod.__file__.rsplit("/", 1)[0] + "/examples"
    pool_file, test_file = f"{root}/pool.jsonl", f"{root}/test.jsonl"
    data, ret, out = tmp_path / "data", tmp_path / "retriever", tmp_path / "sel.jsonl"
    score_args = ["se2", "score", "--pool", pool_file, "--llm", "scripted", "--out", str(data),
                  "--n-candidates", "12", "--quiet"]
    assert main(score_args) == 0
    for name in ("pool.jsonl", "queries.jsonl", "train.jsonl", "valid.jsonl", "step3_train.jsonl", "score.json",
                 "llm_cache.sqlite"):
        assert (data / name).is_file(), name
    first = (data / "train.jsonl").read_text()

    def no_calls(context, continuation):
        raise AssertionError("the rerun should be answered from the cache")

    monkeypatch.setattr(demo_mod, "scripted_loglikelihood", no_calls)
    assert main(score_args) == 0  # resumes: every request from llm_cache.sqlite
    assert (data / "train.jsonl").read_text() == first
    monkeypatch.undo()

    encoder = _write_encoder(tmp_path / "bert")
    assert main(["se2", "train", "--data", str(data), "--encoder", str(encoder), "--out", str(ret),
                 "--lr", "3e-3", "--epochs", "8", "--batch-size", "16", "--warmup-steps", "20",
                 "--hard-negatives", "5", "--random-negatives", "5", "--max-query-length", "192",
                 "--max-context-length", "64", "--quiet"]) == 0
    assert (ret / "se2_retriever.json").is_file()
    capsys.readouterr()
    assert main(["se2", "select", "--retriever", str(ret), "--pool", pool_file, "--queries", test_file,
                 "--out", str(out), "--llm", "scripted", "--quiet"]) == 0
    printed = capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    pool = {e.id: e for e in read_examples(pool_file)}
    queries = read_examples(test_file)
    assert len(rows) == len(queries)
    for row, q in zip(rows, queries):
        assert row["query_id"] == q.id and len(row["ids"]) == 3 and len(set(row["ids"])) == 3
        assert row["prompt"] == SEPARATOR.join([f"{pool[i].question} {pool[i].answer}" for i in row["ids"]]
                                               + [q.question])
    accuracy = float(printed.split("accuracy ")[1].split()[0])
    assert accuracy >= 0.8, printed


def test_cli_budget_and_user_errors(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "question": "q"}\nnot json\n')
    assert main(["se2", "score", "--pool", str(tmp_path / "missing.jsonl"), "--llm", "scripted",
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["se2", "score", "--pool", str(bad), "--llm", "scripted", "--out", str(tmp_path / "o")]) == 2
    assert "bad.jsonl:2: not JSON" in capsys.readouterr().err
    good = tmp_path / "pool.jsonl"
    good.write_text("".join(json.dumps(Example(i, f"q{i}", options=["a", "b"], gold=0).to_dict()) + "\n"
                            for i in range(4)))
    assert main(["se2", "score", "--pool", str(good), "--llm", "no-such-thing", "--out", str(tmp_path / "o")]) == 2
    assert "--llm" in capsys.readouterr().err
    assert main(["se2", "train", "--data", str(tmp_path), "--encoder", "x", "--out", str(tmp_path / "r")]) == 2
    assert "lmops se2 score" in capsys.readouterr().err
    assert main(["se2"]) == 2


def test_cli_score_with_a_local_causal_lm_directory(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmops.common.offline_tokenizer import byte_level_tokenizer
    from lmops.methods.se2 import read_records

    tok = byte_level_tokenizer(padding_side="left")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0))
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": i, "question": f"q{i} is", "options": ["yes", "no"], "gold": i % 2})
                            + "\n" for i in range(6)))
    assert main(["se2", "score", "--pool", str(pool), "--llm", f"hf:{tmp_path / 'lm'}", "--out", str(tmp_path / "o"),
                 "--n-candidates", "3", "--steps", "2", "--quiet"]) == 0
    recs = read_records(tmp_path / "o" / "train.jsonl") + read_records(tmp_path / "o" / "valid.jsonl")
    assert len(recs) == 12 and all(len(r.ctxs) == 3 for r in recs)
    for r in recs:  # a real LM's normalised gold losses: shares of a sum over two options
        assert all(0.0 < c.loss < 1.0 and c.pred in (0, 1) for c in r.ctxs)
        assert [c.loss for c in r.ctxs] == sorted(c.loss for c in r.ctxs)
