"""llm_from_spec: the --llm argument of every verb (URL, model directory, scripted), optionally cached."""

import pytest

from lmops.llm import CachedLLM, FunctionLLM, HFLocal, OpenAICompatible, llm_from_spec
from llm_models import save_tiny_lm


def test_each_kind_of_spec(tmp_path):
    http = llm_from_spec("http://127.0.0.1:9/v1", model="m")
    assert isinstance(http, OpenAICompatible)
    local = llm_from_spec(str(save_tiny_lm(tmp_path / "tiny")))
    assert isinstance(local, HFLocal) and local.name == "tiny"
    scripted = llm_from_spec("scripted", scripted=lambda: FunctionLLM(lambda p, **k: "ok", name="s"))
    assert scripted.generate(["x"]) == [["ok"]]
    cached = llm_from_spec("scripted", scripted=lambda: FunctionLLM(lambda p, **k: "ok"), cache=tmp_path / "c.db")
    assert isinstance(cached, CachedLLM) and (tmp_path / "c.db").exists()


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        ("http://127.0.0.1:9/v1", {}, "--model"),
        ("scripted", {}, "no scripted recipe"),
        ("/no/such/dir", {}, "neither"),
        ("", {}, "--llm"),
    ],
)
def test_bad_specs_name_the_argument(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        llm_from_spec(spec, **kwargs)
