"""Prompt-lookup speculative decoding: drafting and acceptance in isolation, the cache's empty
slots, and greedy requests with prompt lookup token-identical to plain greedy (and to
transformers) over the processor grid, alone and mixed in one batch with beam and sampling
requests, with real drafts and with drafts that are partly right."""

import numpy as np
import pytest
import torch
from test_batching import MIXED, decode_step

from ledserve.engine import lookup
from ledserve.engine.engine import Engine
from ledserve.engine.errors import InvalidRequest
from ledserve.engine.kv_cache import KVCache

GRID = [  # greedy processor settings
    dict(min_new_tokens=8),
    dict(min_new_tokens=8, repetition_penalty=1.3),
    dict(no_repeat_ngram_size=2),
    dict(min_new_tokens=12, no_repeat_ngram_size=3),
    dict(min_new_tokens=8, forced_eos_token_id=2, repetition_penalty=0.8),
]


def test_draft_takes_the_longest_suffix_at_its_most_recent_occurrence():
    source = np.array([5, 6, 7, 8, 9, 6, 7, 10, 11, 12])
    # "6 7" occurs twice: its most recent continuation is 10 11 12
    assert lookup.draft(source, np.array([2, 6, 7]), 3, 2).tolist() == [10, 11, 12]
    assert lookup.draft(source, np.array([2, 6, 7]), 2, 2).tolist() == [10, 11]
    # "3 7" does not occur: the 1-gram "7" does (most recent: 10)
    assert lookup.draft(source, np.array([3, 7]), 2, 2).tolist() == [10, 11]
    assert lookup.draft(source, np.array([2, 12]), 3, 2).tolist() == []  # at the very end
    assert lookup.draft(source, np.array([2, 99]), 3, 2).tolist() == []
    assert lookup.draft(source, np.array([8, 9]), 4, 1).tolist() == [6, 7, 10, 11]


def test_accepted_counts_the_agreeing_prefix():
    assert lookup.accepted(np.array([4, 5, 6]), np.array([4, 5])) == 2
    assert lookup.accepted(np.array([4, 9, 6]), np.array([4, 5])) == 1
    assert lookup.accepted(np.array([3, 5, 6]), np.array([4, 5])) == 0
    assert lookup.accepted(np.array([3]), np.array([], np.int64)) == 0


def test_compact_and_select_keep_every_rows_tokens():
    rng = np.random.default_rng(0)
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 1, 0, 0, 1, 0], [0, 0, 0, 1, 0, 0]])
    keys = [torch.from_numpy(rng.normal(size=(3, 2, 6, 4)).astype(np.float32))]
    cache = KVCache(keys, [k * 2 for k in keys], mask)
    compact = cache.compact()
    assert compact.mask.tolist() == [[1, 1, 1], [1, 1, 1], [0, 0, 1]]
    for row in range(3):
        kept = mask[row].bool()
        n = int(kept.sum())
        assert torch.equal(compact.keys[0][row, :, 3 - n :], keys[0][row][:, kept])
        assert torch.equal(compact.values[0][row, :, 3 - n :], 2 * keys[0][row][:, kept])
    selected = cache.select([2, 0])  # slot 0 is empty in both rows: trimmed; slot 2 stays
    assert selected.mask.tolist() == [[0, 0, 1, 0, 0], [1, 0, 1, 1, 0]]


def _copying_inputs(engine, rng, count):
    """Inputs that hold their own plain greedy answer (so that drafts get accepted): random ids,
    the decoder start token and the answer of those ids, more random ids, the answer again."""
    vocab = engine.vocab_size
    rows = []
    for _ in range(count):
        head = rng.integers(5, vocab, int(rng.integers(5, 40))).tolist()
        answer = engine.generate([head], max_new_tokens=15, min_new_tokens=10)[0][1:]
        tail = rng.integers(5, vocab, int(rng.integers(0, 20))).tolist()
        # the decoder start token before an answer: the first step always finds a draft
        start = engine.defaults["decoder_start_token_id"]
        rows.append([*head, start, *answer, *tail, *answer])
    return rows


@pytest.mark.parametrize("params", GRID, ids=[str(p) for p in GRID])
def test_greedy_with_prompt_lookup_equals_plain_greedy(exported, checkpoint, rng, params):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    rows = _copying_inputs(engine, rng, 4)
    plain = engine.generate(rows, max_new_tokens=16, **params)
    calls = engine.decoder_calls
    fast = engine.generate(rows, max_new_tokens=16, prompt_lookup_num_tokens=4, **params)
    assert fast == plain
    with torch.no_grad():  # and transformers' own greedy, for the first input
        want = model.generate(torch.tensor([rows[0]]), max_new_tokens=16, num_beams=1,
                              do_sample=False, **params)[0].tolist()  # fmt: skip
    assert fast[0] == want[: len(fast[0])] and all(t == model.config.pad_token_id
                                                   for t in want[len(fast[0]) :])  # fmt: skip
    print(f"drafted {engine.draft_tokens}, accepted {engine.accepted_draft_tokens}, "
          f"runs {engine.decoder_calls - calls}")  # fmt: skip
    assert engine.draft_tokens > 0


@pytest.mark.parametrize("params", GRID[:3], ids=[str(p) for p in GRID[:3]])
def test_partly_right_drafts_keep_plain_greedy(exported, rng, monkeypatch, params):
    """Drafts that follow the true answer for a random number of tokens, then go wrong: every
    acceptance length and rollback, in a batch of requests of different lengths."""
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    rows = [rng.integers(5, engine.vocab_size, int(n)).tolist() for n in rng.integers(3, 60, 5)]
    plain = engine.generate(rows, max_new_tokens=20, **params)
    truth = {tuple(r): p for r, p in zip(rows, plain, strict=True)}

    def oracle(source, sequence, count, ngram):
        answer = truth[tuple(source.tolist())][len(sequence) :]
        right = int(rng.integers(0, count + 1))
        wrong = rng.integers(5, engine.vocab_size, count).tolist()
        return np.array((answer[:right] + wrong)[:count], np.int64)

    monkeypatch.setattr(lookup, "draft", oracle)
    fast = engine.generate(rows, max_new_tokens=20, prompt_lookup_num_tokens=5, **params)
    assert fast == plain
    assert 0 < engine.accepted_draft_tokens < engine.draft_tokens


def test_mixed_with_beam_and_sampling_requests(exported, rng, monkeypatch):
    """Prompt-lookup requests joining a batch of beam, sampling and plain greedy requests (each
    equal to its result alone, which the batching tests compare with transformers)."""
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    inputs = _copying_inputs(engine, rng, len(MIXED) + 2)
    jobs = list(zip(inputs, [*MIXED, *[dict(max_new_tokens=14, prompt_lookup_num_tokens=3)] * 2],
                    strict=True))  # fmt: skip
    alone = [engine.generate([ids], **params) for ids, params in jobs]
    requests = []
    for ids, params in jobs:
        requests.append(engine.submit(ids, **params))
        decode_step(engine)
    assert [f.results for f in engine.run_until_done(requests)] == alone


def test_streaming_emits_each_token_once(exported, rng):
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = _copying_inputs(engine, rng, 1)[0]
    want = engine.generate([ids], max_new_tokens=16)[0]
    chunks = list(engine.stream(ids, max_new_tokens=16, prompt_lookup_num_tokens=4))
    assert [want[0], *(t for chunk in chunks for t in chunk)] == want


def test_server_default_and_refusals(exported):
    engine = Engine.from_artifacts(exported["fp32"], device="cpu", prompt_lookup=3)
    assert engine.params().prompt_lookup_num_tokens == 3  # greedy requests draft by default
    assert engine.params(num_beams=2).prompt_lookup_num_tokens is None  # not beam search
    assert engine.params(prompt_lookup_num_tokens=None).prompt_lookup_num_tokens is None
    with pytest.raises(InvalidRequest, match="prompt_lookup_num_tokens needs greedy search"):
        engine.params(prompt_lookup_num_tokens=2, num_beams=2)
    with pytest.raises(InvalidRequest, match="prompt_lookup_num_tokens needs greedy search"):
        engine.params(prompt_lookup_num_tokens=2, do_sample=True)
    with pytest.raises(InvalidRequest, match="prompt_lookup_num_tokens must be between 1 and 64"):
        engine.params(prompt_lookup_num_tokens=0)
    with pytest.raises(InvalidRequest, match="max_matching_ngram_size must be between 1 and 16"):
        engine.params(prompt_lookup_num_tokens=2, max_matching_ngram_size=17)
