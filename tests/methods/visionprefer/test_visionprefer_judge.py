"""Judges: answer parsing (JSON, text, several images, malformed), the callable adapter, and the
OpenAI-compatible vision judge against a scripted local HTTP server (content parts, retries)."""

import base64
import json
import sys
from pathlib import Path

import pytest

from lmops.llm import LLMError
from lmops.methods.visionprefer import CallableJudge, OpenAIVisionJudge, as_judge, judge_instruction, parse_judgement

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "llm"))  # fault_server, under any import mode
from fault_server import FaultServer, error, ok  # noqa: E402


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"score": 4, "rationale": "Red and round."}', (4.0, "Red and round.")),
        ('Sure! ```json\n{"Score": "3", "reason": "Off centre."}\n``` hope it helps', (3.0, "Off centre.")),
        ('Here you go: {"rating": "5/5", "explanation": "Perfect."} done', (5.0, "Perfect.")),
        ("Score: 2\nRationale: Too noisy.\nThe edges are broken.", (2.0, "Too noisy.\nThe edges are broken.")),
        ("**Score:** 4/5\nReason: Fine.", (4.0, "Fine.")),
        ('{"score": 1}', (1.0, "")),
    ],
)
def test_parse_one_image(text, expected):
    assert parse_judgement(text, 1, 1, 5) == [expected]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I cannot judge this image.",
        '{"score": 9, "rationale": "x"}',
        '{"score": "high"}',
        "Score: excellent",
        '{"rationale": "no score"}',
        '{"score": 4, "rationale": "cut',
    ],
)
def test_parse_malformed_raises(text):
    with pytest.raises((ValueError, KeyError)):
        parse_judgement(text, 1, 1, 5)


def test_parse_several_images_json_and_text():
    js = json.dumps(
        {"images": [{"image": 2, "score": 1, "rationale": "b"}, {"image": 1, "score": 5, "rationale": "a"}]}
    )
    assert parse_judgement(js, 2) == [(5.0, "a"), (1.0, "b")]  # ordered by the 1-based index
    assert parse_judgement('[{"score": 3}, {"score": 4}]', 2) == [(3.0, ""), (4.0, "")]
    text = "Image 1:\nScore: 4\nRationale: good.\n\nImage 2:\nScore: 2/5\nRationale: bad."
    assert parse_judgement(text, 2) == [(4.0, "good."), (2.0, "bad.")]
    for bad in (
        '{"images": [{"score": 3}]}',
        '[{"image": 1, "score": 3}, {"image": 1, "score": 4}]',
        "Image 1:\nScore: 4",
        '{"score": 4}',
    ):
        with pytest.raises((ValueError, KeyError)):
            parse_judgement(bad, 2)


def test_instruction_names_aspect_scale_and_format():
    text = judge_instruction("a red circle", "fidelity", 1, 1, 5)
    assert "a red circle" in text and "Fidelity" in text and "1 (worst) to 5" in text and '"score"' in text
    assert '"images"' in judge_instruction("p", "aesthetic", 3) and "3 images" in judge_instruction("p", "aesthetic", 3)
    with pytest.raises(ValueError, match="aspect"):
        judge_instruction("p", "beauty", 1)


def test_callable_judge_passes_sample_and_temperature_when_accepted():
    seen = []

    def plain(prompt, paths, aspect):
        return f"Score: {len(paths)}"

    def sampling(prompt, paths, aspect, *, sample=0, temperature=0.0):
        seen.append((sample, temperature))
        return f"Score: {sample + 1}"

    assert CallableJudge(plain).judge("p", ["a", "b"], "aesthetic", n=2) == ["Score: 2", "Score: 2"]
    assert CallableJudge(sampling).judge("p", ["a"], "aesthetic", n=3, temperature=0.7) == [
        "Score: 1",
        "Score: 2",
        "Score: 3",
    ]
    assert seen == [(0, 0.7), (1, 0.7), (2, 0.7)]
    assert CallableJudge(lambda *a: None).judge("p", ["a"], "aesthetic") == [""]  # not a string: malformed
    assert isinstance(as_judge(plain), CallableJudge)
    with pytest.raises(TypeError, match="judge"):
        as_judge(42)


def test_openai_vision_judge_sends_images_as_data_url_parts_and_retries(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG fake bytes")
    answers = iter(['{"score": 4, "rationale": "ok"}', '{"score": 2, "rationale": "meh"}'])

    def chat_fn(messages, j):
        return next(answers)

    with FaultServer(chat_fn=chat_fn) as server:
        server.script(error(503), ok())
        judge = OpenAIVisionJudge(
            server.base_url, "vlm", api_key_env=None, backoff_base=0.01, backoff_cap=0.02, progress=False, detail="low"
        )
        with judge:
            out = judge.judge("a red circle", [str(img)], "aesthetic")
        assert out == ['{"score": 4, "rationale": "ok"}']
        assert len(server.requests) == 2  # the 503 was retried
        body = server.requests[-1].body
        assert server.requests[-1].path.endswith("/chat/completions") and body["model"] == "vlm"
        content = body["messages"][0]["content"]
        assert (
            content[0]["type"] == "text" and "a red circle" in content[0]["text"] and "Aesthetic" in content[0]["text"]
        )
        url = content[1]["image_url"]["url"]
        assert content[1]["type"] == "image_url" and content[1]["image_url"]["detail"] == "low"
        assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == img.read_bytes()
        assert judge.name.startswith("openai-vision:vlm@")


def test_openai_vision_judge_gives_up_with_llm_error(tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(b"x")
    with FaultServer(default=error(500)) as server:
        judge = OpenAIVisionJudge(
            server.base_url, "vlm", api_key_env=None, max_retries=1, backoff_base=0.0, progress=False
        )
        with judge, pytest.raises(LLMError, match="retries"):
            judge.judge("p", [str(img)], "fidelity")
        with pytest.raises(ValueError, match="detail"):
            OpenAIVisionJudge(server.base_url, "vlm", detail="huge")


def test_annotate_over_http_with_a_missing_image(tmp_path):
    from lmops.methods.visionprefer import AnnotateConfig, ImageEntry, PromptRecord, annotate, merge_annotations

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        p.write_bytes(bytes([i]) * 10)
        paths.append(str(p))
    paths.append(str(tmp_path / "missing.png"))
    record = PromptRecord("p0", "a red circle", [ImageEntry(f"i{k}", path) for k, path in enumerate(paths)])

    def chat_fn(messages, j):  # scores each image by its first byte: 1, 2, 3
        url = messages[0]["content"][1]["image_url"]["url"]
        return json.dumps({"score": base64.b64decode(url.split(",", 1)[1])[0] + 1, "rationale": "by byte"})

    with FaultServer(chat_fn=chat_fn) as server:
        judge = OpenAIVisionJudge(server.base_url, "vlm", api_key_env=None, progress=False)
        with judge:
            report = annotate(
                [record], judge, tmp_path / "ann.jsonl", AnnotateConfig(aspects=("fidelity",)), fsync=False
            )
    assert report.annotated == 3 and len(report.skipped) == 1 and "missing.png" in report.skipped[0][3]
    merged = merge_annotations([record], tmp_path / "ann.jsonl")[0]
    assert [im.scores.get("fidelity") for im in merged.images] == [1.0, 2.0, 3.0, None]
