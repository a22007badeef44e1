"""FunctionLLM: a callable as an lmops.llm backend, and the argument checks every backend shares."""

from __future__ import annotations

import pytest

from lmops.llm import LLM, FunctionLLM, LLMError, render_chat


def echo(prompt, *, max_new_tokens, temperature, top_p, stop, sample):
    return f"{prompt}|{max_new_tokens}|{temperature}|{top_p}|{sample}. tail"


def test_generate_forwards_arguments_and_returns_n_per_prompt():
    llm = FunctionLLM(echo, name="echo")
    assert isinstance(llm, LLM) and llm.name == "echo"
    out = llm.generate(["a", "b"], max_new_tokens=7, temperature=0.5, top_p=0.9, n=3)
    assert out == [[f"{p}|7|0.5|0.9|{k}. tail" for k in range(3)] for p in ("a", "b")]


def test_stop_strings_cut_the_output_at_the_first_one():
    llm = FunctionLLM(lambda prompt, **kw: "one. two\nthree")
    assert llm.generate(["x"], stop=["\n", "."]) == [["one"]]
    assert llm.generate(["x"], stop="\n") == [["one. two"]]
    assert llm.generate(["x"], stop=["zzz"]) == [["one. two\nthree"]]


def test_chat_renders_the_conversation():
    seen = []
    llm = FunctionLLM(lambda prompt, **kw: seen.append(prompt) or "ok")
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert llm.chat([conv], n=2) == [["ok", "ok"]]
    assert seen == [render_chat(conv)] * 2 == ["system: be brief\nuser: hi\nassistant:"] * 2


def test_loglikelihood_through_the_given_function():
    llm = FunctionLLM(echo, loglikelihood_fn=lambda c, t: (-1.5 * len(t), len(t)))
    assert llm.loglikelihood(["ctx", "c"], ["ab", "abc"]) == [(-3.0, 2), (-4.5, 3)]
    with pytest.raises(NotImplementedError, match="no loglikelihood_fn"):
        FunctionLLM(echo).loglikelihood(["c"], ["t"])
    with pytest.raises(LLMError, match=r"expected \(float, int\)"):
        FunctionLLM(echo, loglikelihood_fn=lambda c, t: "bad").loglikelihood(["c"], ["t"])


def test_a_non_string_answer_is_an_llm_error():
    with pytest.raises(LLMError, match="returned NoneType, expected str"):
        FunctionLLM(lambda prompt, **kw: None, name="broken").generate(["x"])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompts="x"), "prompts: expected a list of strings"),
        (dict(prompts=[1]), "prompts: expected a list of strings"),
        (dict(max_new_tokens=0), "max_new_tokens: expected a positive int"),
        (dict(temperature=-1.0), "temperature: expected a finite number >= 0"),
        (dict(top_p=0.0), r"top_p: expected a number in \(0, 1\]"),
        (dict(stop=[""]), "stop: expected None, a non-empty string"),
        (dict(n=0), "n: expected a positive int"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    llm = FunctionLLM(echo)
    prompts = kwargs.pop("prompts", ["x"])
    with pytest.raises((ValueError, TypeError), match=match):
        llm.generate(prompts, **kwargs)


def test_bad_conversations_and_pairs():
    llm = FunctionLLM(echo, loglikelihood_fn=lambda c, t: (-1.0, 1))
    with pytest.raises(ValueError, match=r"conversations\[0\]\[0\]: expected"):
        llm.chat([[{"role": "robot", "content": "x"}]])
    with pytest.raises(ValueError, match=r"conversations\[0\]: expected a non-empty list"):
        llm.chat([[]])
    with pytest.raises(ValueError, match="expected lists of one length"):
        llm.loglikelihood(["a", "b"], ["c"])
    with pytest.raises(ValueError, match=r"continuations\[0\]: expected a non-empty string"):
        llm.loglikelihood(["a"], [""])
    with pytest.raises(TypeError, match="fn: expected a callable"):
        FunctionLLM("not callable")


def test_content_parts_are_accepted_and_checked():
    from lmops.llm import check_conversations

    parts = [{"type": "text", "text": "what is in "}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]
    llm = FunctionLLM(lambda p, **k: p)
    assert llm.chat([[{"role": "user", "content": parts}]]) == [["user: what is in [image]\nassistant:"]]
    for bad in ([], [{"type": "image_url", "image_url": "not a dict"}], [{"type": "audio", "audio": "x"}]):
        with pytest.raises(ValueError, match="image_url parts"):
            check_conversations([[{"role": "user", "content": bad}]])
