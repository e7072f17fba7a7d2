"""The shipped demo model (demo/checkpoint/): on a fixed held-out set of generated documents the
engine's fp32 answers equal transformers' generate, exact match stays above a floor, and fp16 and
int8 stay close to fp32. Also the generator and the training script themselves."""

import json
import random
import re

import pytest
from transformers import AutoTokenizer, LEDForConditionalGeneration

from ledserve.benchmarks.quality import token_agreement
from ledserve.demo.model import DEMO_MODEL, demo_example
from ledserve.demo.synthetic import LENGTHS, RELATIONS, examples, make_example
from ledserve.demo.train import (
    DEV_SEED,
    HELD_OUT_SEED,
    MAX_NEW_TOKENS,
    SHAPE,
    TrainConfig,
    encode,
    exact_match,
    fact_distance,
    generate,
    stream_seed,
    train,
)
from ledserve.engine.engine import Engine
from ledserve.export.convert import ExportConfig, export_model

HELD_OUT = list(examples(HELD_OUT_SEED, 100))
# Measured on these 100 examples with the shipped model: 0.620 overall, 0.629 on the 97 far facts
# (README, "The demo model"; the target of 0.90 is not reached). The floors sit a few
# points under the measurement, so that a regression, not noise, fails them.
EXACT_MATCH_FLOOR = 0.57
FAR_EXACT_MATCH_FLOOR = 0.57


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory):
    out = {}
    for dtype in ("fp32", "fp16", "int8"):
        out[dtype] = tmp_path_factory.mktemp(f"demo-{dtype}") / "artifacts"
        export_model(ExportConfig(model=str(DEMO_MODEL), output=out[dtype], dtype=dtype))
    return out


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEMO_MODEL)


def _cut_at_eos(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos, 1) + 1] if eos in row[1:] else row


@pytest.fixture(scope="session")
def reference(tokenizer):
    """transformers' greedy tokens for each held-out example (batches of 8, padded)."""
    model = LEDForConditionalGeneration.from_pretrained(DEMO_MODEL).eval()
    rows = []
    for start in range(0, len(HELD_OUT), 8):
        out = generate(model, tokenizer, HELD_OUT[start : start + 8])
        rows += [_cut_at_eos(r, tokenizer.eos_token_id) for r in out.tolist()]
    return rows


def _engine_tokens(folder) -> tuple[list[list[int]], Engine]:
    """The engine's greedy tokens for each held-out example, all submitted at once."""
    engine = Engine.from_artifacts(folder, device="cpu")
    prompts = [engine.prompts.build(e.question, e.context) for e in HELD_OUT]
    tokens = engine.generate(
        [p.input_ids for p in prompts],
        [p.global_attention_mask for p in prompts],
        max_new_tokens=MAX_NEW_TOKENS,
        num_beams=1,
        do_sample=False,
    )
    return tokens, engine


def _exact_match(tokenizer, rows, items=HELD_OUT) -> float:
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return exact_match([e.answer for e in items], texts)


@pytest.fixture(scope="session")
def engine_fp32(demo_artifacts):
    return _engine_tokens(demo_artifacts["fp32"])[0]


def test_training_inputs_are_the_served_prompts(demo_artifacts, tokenizer):
    """The model was trained on exactly what the server feeds it: template, ids, global mask."""
    engine = Engine.from_artifacts(demo_artifacts["fp32"], device="cpu")
    for example in HELD_OUT[:10]:
        prompt = engine.prompts.build(example.question, example.context)
        ids, glob = encode(tokenizer, example)
        assert (prompt.input_ids, prompt.global_attention_mask) == (ids, glob)
        assert prompt.truncated_context_tokens == 0
        assert sum(glob) > 3  # <s>, "question:", and the question's words


def test_fp32_engine_equals_transformers_on_held_out(engine_fp32, reference):
    assert len(engine_fp32) == len(reference)
    for i, (ours, theirs) in enumerate(zip(engine_fp32, reference, strict=True)):
        assert ours == theirs, f"held-out example {i}"


def test_held_out_exact_match_is_above_the_floor(engine_fp32, tokenizer):
    overall = _exact_match(tokenizer, engine_fp32)
    window = max(json.loads((DEMO_MODEL / "config.json").read_text())["attention_window"])
    far = [i for i, e in enumerate(HELD_OUT) if fact_distance(tokenizer, e) > window]
    assert len(far) > 80  # almost every fact is more than one window from the question
    far_match = _exact_match(tokenizer, [engine_fp32[i] for i in far], [HELD_OUT[i] for i in far])
    print(f"exact match {overall:.3f}; {far_match:.3f} on {len(far)} far facts")
    assert overall >= EXACT_MATCH_FLOOR
    assert far_match >= FAR_EXACT_MATCH_FLOOR


# Measured on 500 held-out documents (benchmarks/quality.py): tokens equal to fp32's 0.9998
# (fp16) and 0.9984 (int8); exact match 0.684 fp32, 0.682 fp16, 0.674 int8. On these 100 a point
# is one answer: the floors allow two.
@pytest.mark.parametrize("dtype", ["fp16", "int8"])
def test_reduced_precision_stays_close_to_fp32(demo_artifacts, engine_fp32, tokenizer, dtype):
    """>= 99% of fp32's tokens equal at the same position, exact match down at most 2 points."""
    rows, _ = _engine_tokens(demo_artifacts[dtype])
    agreement = token_agreement(rows, engine_fp32)
    drop = _exact_match(tokenizer, engine_fp32) - _exact_match(tokenizer, rows)
    print(f"{dtype} token agreement {agreement:.4f}, exact-match drop {drop:.3f}")
    assert agreement >= 0.99
    assert drop <= 0.02


def statements(relation, context: str) -> list[tuple[str, str]]:
    """(person, value) of every sentence in the context that states `relation`."""
    found = []
    for fact in relation.facts:
        pattern = re.escape(fact).replace(re.escape("{e}"), r"(?P<e>[A-Z]\w+ [A-Z]\w+)")
        pattern = pattern.replace(re.escape("{v}"), r"(?P<v>\w+)")
        found += [(m["e"], m["v"]) for m in re.finditer(pattern, context)]
    return found


def test_generator_is_deterministic_and_places_facts_anywhere(tokenizer):
    assert list(examples(7, 5)) == list(examples(7, 5))
    assert list(examples(7, 5)) != list(examples(8, 5))
    positions = []
    for e in examples(11, 60):
        relation = next(r for r in RELATIONS if r.name == e.relation)
        stated = statements(relation, e.context)
        about_person = [value for person, value in stated if person == e.person]
        assert len(about_person) == 1  # the needed fact, once, and the answer says its value
        assert e.answer == relation.answer.format(e=e.person, v=about_person[0])
        facts = [f.format(e=e.person, v=about_person[0]) for f in relation.facts]
        assert any(e.context.startswith(fact, e.fact_start) for fact in facts)
        assert len(stated) >= 3  # the same relation for other people
        other_relations = [r for r in RELATIONS if r is not relation]
        assert any(p == e.person for r in other_relations for p, _ in statements(r, e.context))
        people = {p for r in RELATIONS for p, _ in statements(r, e.context)}
        assert len(people) >= 5  # facts about many people
        for part in (0, 1):  # no two of them share a first name or a surname
            assert len({p.split()[part] for p in people}) == len(people)
        length = len(tokenizer(e.context, add_special_tokens=False)["input_ids"])
        assert LENGTHS[0] * 0.95 <= length <= LENGTHS[1] * 1.05
        positions.append(e.fact_start / len(e.context))
    assert min(positions) < 0.1 and max(positions) > 0.9 and any(0.4 < p < 0.6 for p in positions)


def test_demo_question_is_far_from_the_question(tokenizer):
    example = demo_example()
    window = max(json.loads((DEMO_MODEL / "config.json").read_text())["attention_window"])
    assert fact_distance(tokenizer, example) > 20 * window
    assert make_example(random.Random(0)).answer  # the generator's entry point, with defaults


def test_training_never_sees_dev_or_held_out_documents(tmp_path):
    """The curriculum's streams never draw the dev or held-out documents (an earlier version's
    held-out set was its last stage's own stream: seed 4 at full length)."""
    stages = TrainConfig(output=tmp_path).curriculum
    seeds = {stream_seed(seed, stage) for seed in range(10) for stage in range(len(stages))}
    assert not seeds & {DEV_SEED, HELD_OUT_SEED}
    evaluated = {e.context for seed in (DEV_SEED, HELD_OUT_SEED) for e in examples(seed, 200)}
    for stage, (_, lengths) in enumerate(stages):
        assert not {e.context for e in examples(stream_seed(0, stage), 200, lengths)} & evaluated


def test_training_script_runs_and_writes_a_loadable_model(tmp_path):
    report = train(
        TrainConfig(
            output=tmp_path,
            steps=2,
            eval_every=1,
            dev_examples=2,
            held_out_examples=2,
            curriculum=((0.5, (20, 60)), (0.5, (60, 120))),
            batch_tokens=512,
        )
    )
    assert [p["step"] for p in report["curve"]] == [1, 2]
    assert all(p["train_loss"] > 0 for p in report["curve"])
    assert json.loads((tmp_path / "training.json").read_text())["held_out"]["examples"] == 2
    model = LEDForConditionalGeneration.from_pretrained(tmp_path)
    assert model.config.attention_window == SHAPE["attention_window"]


def test_prompt_lookup_gives_the_same_tokens_in_fewer_runs(demo_artifacts, engine_fp32):
    """Greedy with prompt lookup on the held-out documents: every token plain greedy's, in
    at least 1.5x fewer decoder runs (1.73x measured on 24 of them, benchmarks/RESULTS.md)."""
    engine = Engine.from_artifacts(demo_artifacts["fp32"], device="cpu")
    prompts = [engine.prompts.build(e.question, e.context) for e in HELD_OUT]
    runs = []
    for lookup in (None, 10):
        calls = engine.decoder_calls
        tokens = [
            engine.generate([p.input_ids], [p.global_attention_mask],
                            max_new_tokens=MAX_NEW_TOKENS, prompt_lookup_num_tokens=lookup)[0]
            for p in prompts
        ]  # fmt: skip
        assert tokens == engine_fp32
        runs.append(engine.decoder_calls - calls)
    print(f"decoder runs: greedy {runs[0]}, prompt lookup {runs[1]}")
    assert runs[0] >= 1.5 * runs[1]
