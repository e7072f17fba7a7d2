"""transformers' other generation parameters through the engine, against generate on the same
weights: a grid of fresh random cases (greedy and beam 2-4, submitted together in one batch),
token scores against compute_transition_scores, and stop strings."""

import numpy as np
import pytest
import torch
from test_engine import NEAR_TIE, same_up_to_padding
from transformers import AutoTokenizer
from transformers.generation.logits_process import (
    EncoderRepetitionPenaltyLogitsProcessor,
    LogitsProcessorList,
)

from ledserve.engine.detokenize import Detokenizer
from ledserve.engine.engine import Engine
from ledserve.engine.params import GenerationParams
from ledserve.engine.request import FinishReason
from ledserve.engine.search import TokenSearch
from ledserve.engine.stops import StopStrings, StopText


@pytest.fixture(scope="session")
def engine(exported):
    return Engine.from_artifacts(exported["fp32"], device="cpu", diagnostics=True)


def hf_generate(model, ids, **params):
    """transformers' output for one input alone. An encoder repetition penalty with several rows
    is given as a processor whose input ids cover every row: generate's own gathers them for
    the first rows only (a transformers bug; ledserve penalises every row)."""
    ids = torch.tensor([ids])
    rows = max(params.get("num_beams", 1), params.get("num_return_sequences", 1))
    extra = LogitsProcessorList()
    if params.get("encoder_repetition_penalty", 1.0) != 1.0 and rows > 1:
        penalty = params.pop("encoder_repetition_penalty")
        extra.append(EncoderRepetitionPenaltyLogitsProcessor(penalty, ids.repeat(rows, 1)))
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                              logits_processor=extra, **params)  # fmt: skip


def random_params(rng, plain: list[int]):
    """Parameters for one case; `plain`: the tokens generated without them (bans taken from it
    so that they bite)."""
    beams = int(rng.choice([1, 1, 2, 3, 4]))
    params = {"num_beams": beams}
    if rng.random() < 0.3:
        params["max_length"] = int(rng.integers(2, 20))
    else:
        params["max_new_tokens"] = int(rng.integers(1, 20))
    answer = [t for t in plain[1:] if t != 2]  # without EOS
    if rng.random() < 0.4:
        params["encoder_no_repeat_ngram_size"] = int(rng.choice([1, 2, 3]))
    if rng.random() < 0.4:
        params["encoder_repetition_penalty"] = float(rng.choice([1.6, 0.7]))
    if answer and rng.random() < 0.4:
        words = [[int(rng.choice(answer))]]
        if len(answer) > 2:
            at = int(rng.integers(len(answer) - 1))
            words.append(answer[at : at + 2])
        params["bad_words_ids"] = words
    if answer and rng.random() < 0.3:
        params["suppress_tokens"] = [int(rng.choice(answer))]
    if answer and rng.random() < 0.3:
        params["begin_suppress_tokens"] = [answer[0]]
    if rng.random() < 0.3:
        params["renormalize_logits"] = True
    if rng.random() < 0.3:
        # after min_new_tokens would be banned: transformers' arithmetic makes a banned EOS NaN
        params["exponential_decay_length_penalty"] = (
            int(rng.integers(0, 6)), float(rng.choice([1.3, 1.8, 0.8]))
        )  # fmt: skip
    elif rng.random() < 0.3:
        params["min_new_tokens"] = int(rng.integers(1, 6))
    if rng.random() < 0.2:
        params["repetition_penalty"] = 1.3
        params.pop("encoder_repetition_penalty", None)  # generate would apply it later for beams
    if beams > 1:
        params.update(
            length_penalty=float(rng.choice([1.0, 0.0, 2.0])),
            early_stopping=[True, False, "never"][int(rng.integers(3))],
            num_return_sequences=int(rng.integers(1, beams + 1)),
        )
    return params


def test_new_parameters_match_transformers_grid(checkpoint, engine, rng):
    """Token-identical to generate over 30 fresh cases per model, four requests with different
    parameters in the engine's batch at once; near ties (< 1e-4) may differ, as in test_engine."""
    _, model = checkpoint
    vocab, pad = model.config.vocab_size, model.config.pad_token_id
    exact = near_ties = 0
    while exact < 30:
        inputs = [list(rng.integers(5, vocab, int(rng.integers(3, 60)))) for _ in range(4)]
        plain = engine.generate(inputs, max_new_tokens=12)
        cases = [random_params(rng, p) for p in plain]
        requests = [engine.submit(i, **p) for i, p in zip(inputs, cases, strict=True)]
        finals = engine.run_until_done(requests)
        for ids, params, request, final in zip(inputs, cases, requests, finals, strict=True):
            want = hf_generate(model, ids, **dict(params)).tolist()
            if same_up_to_padding(final.results, want, pad):
                exact += 1
                continue
            assert request.search.margin < NEAR_TIE, (params, ids, final.results, want)
            near_ties += 1
            assert near_ties <= 8, "too many near ties to be rounding"
    print(f"{near_ties} near-tie cases replaced")


def test_token_scores_match_compute_transition_scores(checkpoint, engine, rng):
    """Each token's log-probability within 1e-4 of compute_transition_scores(normalize_logits)
    (greedy, sampling-free beam 2-4, processors on), the top alternatives of greedy, and beam
    search's sequences_scores within 1e-4."""
    _, model = checkpoint
    vocab = model.config.vocab_size
    compared = 0
    for _ in range(12):
        ids = list(rng.integers(5, vocab, int(rng.integers(3, 60))))
        beams = int(rng.choice([1, 2, 3, 4]))
        params = dict(max_new_tokens=int(rng.integers(2, 16)), num_beams=beams,
                      num_return_sequences=int(rng.integers(1, beams + 1)),
                      repetition_penalty=float(rng.choice([1.0, 1.3])),
                      no_repeat_ngram_size=int(rng.choice([0, 2])))  # fmt: skip
        final = engine.run_until_done([engine.submit(ids, output_scores=True, top_n_tokens=3,
                                                     **params)])[0]  # fmt: skip
        out = hf_generate(model, ids, output_scores=True, return_dict_in_generate=True, **params)
        transition = model.compute_transition_scores(
            out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=True
        )
        sequences = out.sequences.tolist()
        if [s[: len(r)] for s, r in zip(sequences, final.results, strict=True)] != final.results:
            continue  # a near tie chose differently (test_engine covers those)
        for row, (result, scores) in enumerate(zip(final.results, final.result_scores,
                                                   strict=True)):  # fmt: skip
            assert len(scores) == len(result) - 1
            got = np.array([s.logprob for s in scores])
            np.testing.assert_allclose(got, transition[row, : len(got)].numpy(), atol=1e-4)
            if beams == 1:
                for step, score in enumerate(scores):
                    best = out.scores[step][row].float().log_softmax(-1).topk(3)
                    assert [t for t, _ in score.top] == best.indices.tolist()
                    np.testing.assert_allclose([v for _, v in score.top], best.values, atol=1e-4)
        if beams > 1:
            np.testing.assert_allclose(final.sequence_scores, out.sequences_scores, atol=1e-4)
        else:
            assert final.sequence_scores is None
        compared += 1
    assert compared >= 8


def test_streamed_events_carry_the_scores_of_their_tokens(engine, rng):
    ids = list(rng.integers(5, engine.vocab_size, 30))
    for params in (dict(num_beams=3), dict(), dict(do_sample=True, seed=4, top_k=5)):
        request = engine.submit(ids, max_new_tokens=12, output_scores=True, **params)
        tokens, scores = [], []
        while True:
            event = engine.next_event(request)
            assert len(event.scores) == len(event.tokens)
            tokens += event.tokens
            scores += event.scores
            if event.finished:
                break
        assert tokens == event.results[0][1:]
        assert scores == event.result_scores[0]
        assert all(s.logprob <= 0 and not s.top for s in scores)


# -- stop strings --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tokenizer(exported):
    return AutoTokenizer.from_pretrained(str(exported["fp32"]))


def test_stop_inside_one_token_across_tokens_and_at_the_first(engine, tokenizer, rng):
    """Stops taken from what the model says without them: a piece inside one token, one across
    two tokens, and the first token's text (the first with whole characters); streamed deltas
    equal the unary answer, which ends before the stop."""
    checked = set()
    for _ in range(40):
        ids = list(rng.integers(5, engine.vocab_size, 30))
        plain = engine.generate([ids], max_new_tokens=20, min_new_tokens=12)[0][1:]
        pieces = [tokenizer.decode([t]) for t in plain]
        pieces = [p if "\ufffd" not in p else "" for p in pieces]  # stops of whole characters
        text = tokenizer.decode(plain, skip_special_tokens=True)
        cases = {}
        # the first token with whole characters of its own (a tiny random model may begin with
        # many that are parts of one)
        first = next((k for k, piece in enumerate(pieces) if piece.strip()), None)
        if first is not None:
            cases["first"] = (pieces[first].strip()[:1], first + 1)
        for k, piece in enumerate(pieces):
            if len(piece.strip()) >= 3 and "inside" not in cases:
                cases["inside"] = (piece.strip()[1:-1], k + 1)
            if k and piece.strip() and pieces[k - 1].strip() and "across" not in cases:
                cases["across"] = (pieces[k - 1].strip()[-1] + piece.strip()[0], k + 1)
        for kind, (stop, within) in cases.items():
            if text.find(stop) < 0:
                continue
            request = engine.submit(ids, max_new_tokens=20, min_new_tokens=12, stop=[stop])
            final = engine.run_until_done([request])[0]
            tokens = final.results[0][1:]
            assert final.finish_reasons[0] is FinishReason.STOP_SEQUENCE, (kind, stop, text)
            assert len(tokens) <= within and tokens == plain[: len(tokens)]
            assert stop not in tokenizer.decode(tokens[:-1], skip_special_tokens=True)
            cut = text[: text.find(stop)]
            assert request.stops.cut(tokenizer.decode(tokens, skip_special_tokens=True)) == cut
            held, detokenizer = StopText((stop,)), Detokenizer(tokenizer)  # as the server streams
            deltas = [held.add(detokenizer.add([t])) for t in tokens]
            assert "".join(deltas) + held.add(detokenizer.flush()) + held.flush() == cut
            checked.add(kind)
        if checked == {"first", "inside", "across"}:
            return
    pytest.fail(f"only {checked} stop cases arose")


def test_stop_across_a_multibyte_character(tokenizer):
    """A stop that a character's second byte-level token completes: found on that token, and
    no streamed delta holds half the character or text past the stop."""
    word = "ok ✓ done"
    tokens = tokenizer.encode(word, add_special_tokens=False)
    pieces = [tokenizer.decode([t]) for t in tokens]
    assert any("\ufffd" in p for p in pieces), "the tokenizer splits ✓ into byte tokens"
    stops = StopStrings(("✓",), tokenizer)
    search = TokenSearch(_params(stop=("✓",)), stops=stops)
    for at, token in enumerate(tokens):
        search.advance(np.array([token]))
        text = tokenizer.decode(tokens[: at + 1])
        assert search.done == ("✓" in text), (at, text)
        if search.done:
            break
    assert search.results()[0][1:] == tokens[: at + 1]
    held, out, detokenizer = StopText(("✓",)), "", Detokenizer(tokenizer)
    for token in tokens:
        out += held.add(detokenizer.add([token]))
    out += held.add(detokenizer.flush()) + held.flush()
    assert out == "ok "


def _params(**values):
    return GenerationParams(max_new_tokens=20, eos_token_id=(2,), decoder_start_token_id=2,
                            **values)  # fmt: skip


def test_stop_text_holds_back_only_what_may_begin_a_stop():
    held = StopText(("END", "xyz"))
    assert held.add("abc E") == "abc "
    assert held.add("N") == ""
    assert held.add("x") == "EN"  # "ENx" cannot begin END; "x" may begin xyz
    assert held.add("yzzz") == ""  # xyz: the text ends before it
    assert held.add("more") == "" and held.flush() == ""
    other = StopText(("END",))
    assert other.add("the E") == "the " and other.flush() == "E"


def test_beam_search_ends_a_hypothesis_at_a_stop(engine, tokenizer, rng):
    """A hypothesis whose text gains a stop is finished there, as at EOS: no returned sequence
    holds a stop before its last token, and those ending at one say STOP_SEQUENCE."""
    stopped = 0
    for _ in range(20):
        ids = list(rng.integers(5, engine.vocab_size, 30))
        params = dict(
            max_new_tokens=15,
            min_new_tokens=10,
            num_beams=3,
            num_return_sequences=3,
            length_penalty=0.0,
        )  # fmt: skip  (short, stopped hypotheses score best)
        plain = engine.generate([ids], **params)[0][1:]
        text = tokenizer.decode(plain, skip_special_tokens=True).strip()
        if len(text) < 4:
            continue
        stop = text[len(text) // 2 : len(text) // 2 + 2]
        final = engine.run_until_done([engine.submit(ids, stop=[stop], **params)])[0]
        for result, reason in zip(final.results, final.finish_reasons, strict=True):
            decoded = tokenizer.decode(result, skip_special_tokens=True)
            before = tokenizer.decode(result[:-1], skip_special_tokens=True)
            assert stop not in before
            assert (reason is FinishReason.STOP_SEQUENCE) == (stop in decoded)
        stopped += FinishReason.STOP_SEQUENCE in final.finish_reasons
        if stopped >= 3:
            return
    pytest.fail(f"only {stopped} cases returned a stopped hypothesis")
