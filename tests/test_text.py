"""Text in, text out: the input template, global attention on the question, incremental
detokenization (never a broken UTF-8 character), streaming equal to the whole answer."""

import pytest
from transformers import AutoTokenizer

from ledserve.demo.tiny import corpus
from ledserve.engine.detokenize import Detokenizer
from ledserve.engine.engine import Engine
from ledserve.engine.errors import InvalidRequest
from ledserve.engine.prompt import PromptBuilder


@pytest.fixture(scope="module")
def engine(exported):
    return Engine.from_artifacts(exported["fp32"], device="cpu")


@pytest.mark.parametrize("cleanup", [False, True])
@pytest.mark.parametrize(
    "text",
    ["東京 データ 🙂 café naïve über", "the river 🙂🙂 データ value.", "a , b . Do n't 's !"],
)
def test_detokenizer_deltas_join_to_the_full_decode(exported, text, cleanup):
    tokenizer = AutoTokenizer.from_pretrained(
        str(exported["fp32"]), clean_up_tokenization_spaces=cleanup
    )
    ids = tokenizer(text)["input_ids"]
    for step in (1, 2, 3):  # tokens arrive one, two, three at a time
        detokenizer = Detokenizer(tokenizer)
        deltas = [detokenizer.add(ids[i : i + step]) for i in range(0, len(ids), step)]
        deltas.append(detokenizer.flush())
        assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True)
        assert not any("\ufffd" in d for d in deltas)
    assert cleanup or tokenizer.decode(ids, skip_special_tokens=True) == text


def test_detokenizer_decodes_only_a_window_per_call(exported):
    """O(new tokens) per call: the tokens decoded over a 600-token answer stay a small multiple
    of 600, never the ~180,000 a re-decode of the whole answer at every token costs."""
    tokenizer = AutoTokenizer.from_pretrained(str(exported["fp32"]))
    ids = tokenizer(" ".join(corpus(40, seed=5)))["input_ids"][:600]
    assert len(ids) == 600
    decoded = []

    class Counting:
        def decode(self, tokens, **kwargs):
            decoded.append(len(tokens))
            return tokenizer.decode(tokens, **kwargs)

    detokenizer = Detokenizer(Counting())
    text = "".join(detokenizer.add([t]) for t in ids) + detokenizer.flush()
    assert text == tokenizer.decode(ids, skip_special_tokens=True)
    assert sum(decoded) < 8 * len(ids)


def test_question_template_and_global_attention(engine):
    prompt = engine.prompts.build("where is the river?", ["first passage.", "second one."])
    ids, glob, tokenizer = prompt.input_ids, prompt.global_attention_mask, engine.tokenizer
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == "question: where is the river? context: first passage.\nsecond one."
    width = sum(glob)
    assert tokenizer.decode(ids[1:width]) == "question: where is the river?"
    assert glob[:width] == [1] * width and not any(glob[width:])
    assert prompt.truncated_context_tokens == 0
    with pytest.raises(InvalidRequest, match="question must not be empty"):
        engine.prompts.build("  ", "context")


@pytest.mark.parametrize("limit", [40, 41, 97])
def test_over_long_context_loses_its_end_never_the_question(engine, rng, limit):
    tokenizer, question = engine.tokenizer, "which city is north of the river?"
    context = " ".join(corpus(int(rng.integers(20, 40)), seed=int(rng.integers(1 << 30))))
    prompts = PromptBuilder(tokenizer, engine.prompts.template, limit)
    prompt = prompts.build(question, context)
    ids = prompt.input_ids
    assert limit - 3 <= len(ids) <= limit  # cut at a context token boundary: close to the limit
    text = tokenizer.decode(ids, skip_special_tokens=True)
    head = f"question: {question} context: "
    assert text.startswith(head) and context.startswith(text[len(head) :])
    kept = len(tokenizer(text[len(head) :], add_special_tokens=False)["input_ids"])
    tokenized = context[: len(context) - prompt.truncated_context_characters]  # the budget's cut
    total = len(tokenizer(tokenized, add_special_tokens=False)["input_ids"])
    assert prompt.truncated_context_tokens == total - kept > 0
    assert sum(prompt.global_attention_mask) == sum(
        engine.prompts.build(question, "x").global_attention_mask
    )
    full = len(engine.prompts.build(question, context).input_ids)
    message = rf"input has {full} tokens; the model's maximum is {limit} \(truncation is REJECT\)"
    if len(context) > prompts.character_budget:  # refused before tokenizing
        message = rf"context has {len(context)} characters; it cannot fit the model's {limit} "
    with pytest.raises(InvalidRequest, match=message):
        prompts.build(question, context, truncate=False)
    message = r"question is too long: the input without context has \d+ tokens; the model's max"
    with pytest.raises(InvalidRequest, match=message):
        PromptBuilder(tokenizer, engine.prompts.template, 5).build(question, context)


def test_streamed_answer_equals_answer(engine):
    params = dict(max_new_tokens=15, min_new_tokens=10, num_beams=2)
    answer = engine.answer("what is the value?", "the market value is seven.", **params)
    streamed = "".join(
        engine.stream_answer("what is the value?", "the market value is seven.", **params)
    )
    assert streamed == answer and answer


def test_a_huge_context_is_cut_to_a_character_budget_before_tokenizing(engine, rng):
    """A context far beyond the limit is cut at a whitespace to the character budget first; the
    kept tokens equal those of tokenizing it whole, and the cut is reported; a question beyond
    the budget is refused without tokenizing it."""
    tokenizer, question = engine.tokenizer, "which city is north of the river?"
    prompts = PromptBuilder(tokenizer, engine.prompts.template, 60)
    budget = prompts.character_budget
    lines = corpus(int(rng.integers(200, 400)), seed=int(rng.integers(1 << 30)))
    context = " ".join(lines)
    while len(context) < 3 * budget:
        context += " " + context
    whole = PromptBuilder(tokenizer, engine.prompts.template, 60)
    whole.__dict__["character_budget"] = 10 * len(context)  # no character cut: the reference
    prompt, want = prompts.build(question, context), whole.build(question, context)
    assert prompt.input_ids == want.input_ids
    assert prompt.global_attention_mask == want.global_attention_mask
    chars = prompt.truncated_context_characters
    assert len(context) - budget <= chars <= len(context) - budget + 1024
    assert context[len(context) - chars].isspace() or chars == len(context) - budget
    assert 0 < prompt.truncated_context_tokens < want.truncated_context_tokens
    with pytest.raises(InvalidRequest, match=r"context has \d+ characters; it cannot fit"):
        prompts.build(question, context, truncate=False)
    with pytest.raises(InvalidRequest, match=rf"question has {budget + 1} characters"):
        prompts.build("w" * (budget + 1), "c")
