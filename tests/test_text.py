"""Text in, text out: the input template, global attention on the question, incremental
detokenization (never a broken UTF-8 character), streaming equal to the whole answer."""

import pytest
from transformers import AutoTokenizer

from engine.detokenize import Detokenizer
from engine.engine import Engine
from engine.errors import InvalidRequest


@pytest.fixture(scope="module")
def engine(exported):
    return Engine.from_artifacts(exported["fp32"], device="cpu")


@pytest.mark.parametrize("text", ["東京 データ 🙂 café naïve über", "the river 🙂🙂 データ value."])
def test_detokenizer_deltas_join_to_the_full_decode(exported, text):
    tokenizer = AutoTokenizer.from_pretrained(str(exported["fp32"]))
    ids = tokenizer(text)["input_ids"]
    detokenizer = Detokenizer(tokenizer)
    deltas = [detokenizer.add([t]) for t in ids] + [detokenizer.flush()]
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text
    assert not any("\ufffd" in d for d in deltas)


def test_question_template_and_global_attention(engine):
    ids, glob = engine.encode_question("where is the river?", ["first passage.", "second one."])
    tokenizer = engine.tokenizer
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == "question: where is the river? context: first passage.\nsecond one."
    width = sum(glob)
    assert tokenizer.decode(ids[1:width]) == "question: where is the river?"
    assert glob[:width] == [1] * width and not any(glob[width:])
    with pytest.raises(InvalidRequest, match="question must not be empty"):
        engine.encode_question("  ", "context")


def test_streamed_answer_equals_answer(engine):
    params = dict(max_new_tokens=15, min_new_tokens=10, num_beams=2)
    answer = engine.answer("what is the value?", "the market value is seven.", **params)
    streamed = "".join(
        engine.stream_answer("what is the value?", "the market value is seven.", **params)
    )
    assert streamed == answer and answer
