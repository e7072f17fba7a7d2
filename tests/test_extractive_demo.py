"""The shipped extractive demo model (demo/extractive/): on held-out generated documents the
engine's answers equal transformers' question-answering pipeline, exact match and no-answer
accuracy stay above floors; the unanswerable questions and the training script themselves."""

import itertools
import json
import random
import re

import pytest
from transformers import AutoTokenizer, LongformerForQuestionAnswering, pipeline

from ledserve.demo.model import DEMO_EXTRACTIVE, demo_example
from ledserve.demo.synthetic import make_unanswerable
from ledserve.demo.train_extractive import (
    DEV_SEED,
    HELD_OUT_SEED,
    TrainConfig,
    batches,
    examples,
    stream_seed,
    train,
)
from ledserve.engine.engine import Engine
from ledserve.export.convert import ExportConfig, export_model

HELD_OUT = examples(HELD_OUT_SEED, 100)
# Measured on these 100 examples with the shipped model: exact match 0.15, no-answer accuracy
# 0.765 on the 17 unanswerable (training.json: 0.13 and 0.82 on 200). The model barely answers
# (README, "The extractive demo model"); the floors catch a broken engine or export, not quality.
EXACT_MATCH_FLOOR = 0.10
NO_ANSWER_FLOOR = 0.6


@pytest.fixture(scope="session")
def demo_extractor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo-extractive") / "artifacts"
    export_model(ExportConfig(model=str(DEMO_EXTRACTIVE), output=folder))
    return Engine.from_artifacts(folder, device="cpu")


@pytest.fixture(scope="session")
def engine_answers(demo_extractor):
    """The engine's best answer to each held-out question, with handle_impossible_answer."""
    return [
        demo_extractor.extract(e.question, e.context, handle_impossible_answer=True)
        for e in HELD_OUT
    ]


def test_engine_equals_the_pipeline_on_held_out(engine_answers):
    model = LongformerForQuestionAnswering.from_pretrained(DEMO_EXTRACTIVE).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_EXTRACTIVE)
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    for i, (e, ours) in enumerate(zip(HELD_OUT, engine_answers, strict=True)):
        theirs = qa(question=e.question, context=e.context, max_seq_len=4096,
                    handle_impossible_answer=True)  # fmt: skip
        assert (ours["answer"], ours["start"], ours["end"]) == (
            theirs["answer"], theirs["start"], theirs["end"]
        ), f"held-out example {i}"  # fmt: skip
        assert ours["score"] == pytest.approx(theirs["score"], abs=1e-4)


def test_held_out_exact_match_and_no_answer_accuracy(engine_answers):
    right = sum(
        a["answer"].strip() == e.value for a, e in zip(engine_answers, HELD_OUT, strict=True)
    )
    absent = [a for a, e in zip(engine_answers, HELD_OUT, strict=True) if not e.value]
    no_answer = sum(a["answer"] == "" for a in absent) / len(absent)
    print(f"exact match {right / len(HELD_OUT):.3f}; no-answer accuracy {no_answer:.3f} "
          f"on {len(absent)} unanswerable")  # fmt: skip
    assert len(absent) >= 10
    assert right / len(HELD_OUT) >= EXACT_MATCH_FLOOR
    assert no_answer >= NO_ANSWER_FLOOR


def test_unanswerable_questions_ask_about_somebody_absent():
    rng = random.Random(3)
    for _ in range(30):
        e = make_unanswerable(rng, (50, 400))
        first, last = e.person.split()
        words = set(re.findall(r"\w+", e.context))
        assert first not in words and last not in words and e.person in e.question
        assert e.value == "" and e.answer == ""


def test_demo_question_has_a_span_answer():
    example = demo_example()
    assert example.context[example.value_start :].startswith(example.value)


def test_training_never_sees_dev_or_held_out_documents(tmp_path):
    cfg = TrainConfig(output=tmp_path)
    evaluated = {e.context for seed in (DEV_SEED, HELD_OUT_SEED) for e in examples(seed, 200)}
    for stage, (_, lengths) in enumerate(cfg.curriculum):
        stream = batches(stream_seed(cfg.seed, stage), lengths, cfg.batch_tokens)
        seen = {e.context for batch in itertools.islice(stream, 40) for e in batch}
        assert len(seen) > 40 and not seen & evaluated


def test_training_script_runs_and_writes_a_loadable_model(tmp_path):
    report = train(TrainConfig(output=tmp_path, steps=2, eval_every=1, dev_examples=2,
                               held_out_examples=2, batch_tokens=512,
                               curriculum=((0.5, (20, 60)), (0.5, (60, 120)))))  # fmt: skip
    assert [p["step"] for p in report["curve"]] == [1, 2]
    assert json.loads((tmp_path / "training.json").read_text())["held_out"]["examples"] == 2
    assert LongformerForQuestionAnswering.from_pretrained(tmp_path).config.num_hidden_layers == 3
