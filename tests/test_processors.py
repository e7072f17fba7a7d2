"""engine/processors.py against transformers' own processors, one by one, on random inputs."""

import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from ledserve.engine import processors as ours
from ledserve.engine.errors import InvalidRequest
from ledserve.engine.params import GenerationParams

VOCAB = 40


def random_case(rng, rows=5, length=9):
    ids = rng.integers(0, 12, (rows, length))  # a small id range makes repeats and n-grams likely
    scores = rng.normal(0, 3, (rows, VOCAB)).astype(np.float32)
    return torch.from_numpy(ids), torch.from_numpy(scores)


PAIRS = [
    (ours.RepetitionPenalty(1.7), hf.RepetitionPenaltyLogitsProcessor(1.7)),
    (ours.RepetitionPenalty(0.6), hf.RepetitionPenaltyLogitsProcessor(0.6)),
    (ours.NoRepeatNGram(2), hf.NoRepeatNGramLogitsProcessor(2)),
    (ours.NoRepeatNGram(3), hf.NoRepeatNGramLogitsProcessor(3)),
    (ours.SuppressEosBelow(12, 0, (2, 5)), hf.MinLengthLogitsProcessor(12, [2, 5])),
    (ours.SuppressEosBelow(9, 1, (2,)), hf.MinNewTokensLengthLogitsProcessor(1, 9, 2)),
    (ours.SuppressEosBelow(8, 1, (2,)), hf.MinNewTokensLengthLogitsProcessor(1, 8, 2)),
    (ours.ForceToken([7], at=1), hf.ForcedBOSTokenLogitsProcessor(7)),
    (ours.ForceToken([2], at=9), hf.ForcedEOSTokenLogitsProcessor(10, 2)),
    (ours.Temperature(0.7), hf.TemperatureLogitsWarper(0.7)),
    (ours.TopK(5), hf.TopKLogitsWarper(5)),
    (ours.TopK(1, 3), hf.TopKLogitsWarper(1, min_tokens_to_keep=3)),
    (ours.TopP(0.8), hf.TopPLogitsWarper(0.8)),
    (ours.TopP(0.05, 2), hf.TopPLogitsWarper(0.05, min_tokens_to_keep=2)),
]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{type(p[0]).__name__}")
@pytest.mark.parametrize("length", [1, 2, 9])
def test_processor_matches_transformers(pair, length, rng):
    mine, theirs = pair
    for _ in range(20):
        ids, scores = random_case(rng, length=length)
        want = theirs(ids, scores.clone())
        torch.testing.assert_close(mine(ids, scores), want, rtol=1e-6, atol=1e-6)


def test_build_follows_transformers_order(rng):
    """The whole chain, as generate builds it, on the same inputs."""
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    shared = dict(
        min_new_tokens=9,
        repetition_penalty=1.3,
        no_repeat_ngram_size=2,
        do_sample=True,
        temperature=0.8,
        top_k=10,
        top_p=0.9,
        decoder_start_token_id=2,
        forced_bos_token_id=0,
    )
    params = GenerationParams(max_new_tokens=12, eos_token_id=(2,), **shared)
    config = GenerationConfig(max_length=13, eos_token_id=2, **shared)
    config._eos_token_tensor = torch.tensor([2])
    chain = GenerationMixin._get_logits_processor(
        GenerationMixin.__new__(GenerationMixin),
        config,
        input_ids_seq_length=1,
        encoder_input_ids=torch.zeros(1, 3, dtype=torch.long),
        prefix_allowed_tokens_fn=None,
        logits_processor=None,
        device="cpu",
    )
    mine = ours.build(params)
    assert [type(p).__name__ for p in chain] == [
        "RepetitionPenaltyLogitsProcessor",
        "NoRepeatNGramLogitsProcessor",
        "MinNewTokensLengthLogitsProcessor",
        "ForcedBOSTokenLogitsProcessor",
        "TemperatureLogitsWarper",
        "TopKLogitsWarper",
        "TopPLogitsWarper",
    ]
    for length in (1, 4, 11):
        ids, scores = random_case(rng, length=length)
        want = chain(ids, scores.clone())
        torch.testing.assert_close(ours.apply(mine, ids, scores), want, rtol=1e-6, atol=1e-6)


LIMITS = dict(max_new_tokens_limit=63, max_beams=8, vocab_size=100)
DEFAULTS = {"decoder_start_token_id": 2, "eos_token_id": 2, "max_length": 20}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"num_beams": 0}, "num_beams must be between 1 and 8, got 0"),
        ({"num_beams": 9}, "num_beams must be between 1 and 8, got 9"),
        ({"max_new_tokens": 64}, "max_new_tokens must be between 1 and 63, got 64"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1.5"),
        ({"temperature": -1.0}, "temperature must be between 0.01 and 100, got -1.0"),
        ({"temperature": 1e-45}, "temperature must be between 0.01 and 100, got 1e-45"),
        ({"temperature": float("inf")}, "temperature must be between 0.01 and 100, got inf"),
        ({"repetition_penalty": 1e-40}, "repetition_penalty must be between 0.01 and 100"),
        ({"length_penalty": 1100.0}, "length_penalty must be between -10 and 10, got 1100.0"),
        ({"length_penalty": float("nan")}, "length_penalty must be between -10 and 10, got nan"),
        ({"length_penalty": float("-inf")}, "length_penalty must be between -10 and 10"),
        ({"top_p": float("nan")}, r"top_p must be in \(0, 1\], got nan"),
        ({"top_k": 2**40}, "top_k must be between 0 and 2147483647"),
        ({"min_new_tokens": -1}, "min_new_tokens must be between 0 and 2147483647, got -1"),
        ({"seed": -3}, r"seed must be between 0 and 2\*\*64 - 1, got -3"),
        ({"forced_bos_token_id": 500}, "forced_bos_token_id must hold token ids between 0 and 99"),
        ({"eos_token_id": [2, -1]}, "eos_token_id must hold token ids between 0 and 99"),
        ({"early_stopping": "sometimes"}, "early_stopping must be"),
        (
            {"num_return_sequences": 3, "num_beams": 2},
            "num_return_sequences must be between 1 and 2",
        ),
        ({"typical_p": 0.5}, "unsupported generation parameter 'typical_p'"),
    ],
)
def test_bad_parameters_name_the_field_and_limit(override, message):
    with pytest.raises(InvalidRequest, match=message):
        GenerationParams.build(DEFAULTS, **LIMITS, **override)


def test_defaults_from_generation_config():
    params = GenerationParams.build({**DEFAULTS, "num_beams": 4, "length_penalty": 2.0}, **LIMITS)
    assert (params.max_new_tokens, params.num_beams, params.length_penalty) == (19, 4, 2.0)
    assert params.eos_token_id == (2,)
    with pytest.raises(InvalidRequest, match="'bad_words_ids' \\(from generation_config\\)"):
        GenerationParams.build({**DEFAULTS, "bad_words_ids": [[5]]}, **LIMITS)


def test_masks_of_many_requests_in_one_write_equal_each_alone(rng):
    """The masking processors of requests with different parameters and lengths, marked into one
    Masks with row offsets and written once, give each request's rows what its chain gives them
    alone (engine/sampler.py's batched path against `apply`)."""
    settings = [
        dict(no_repeat_ngram_size=2, min_new_tokens=6),
        dict(min_length=4, forced_bos_token_id=7),
        dict(forced_eos_token_id=3, no_repeat_ngram_size=3),
        dict(),
        dict(min_new_tokens=2, forced_bos_token_id=5, forced_eos_token_id=9, max_new_tokens=1),
    ]
    for _ in range(20):
        masks, parts, want, start = ours.Masks(), [], [], 0
        for setting in settings:
            params = GenerationParams(
                **{"max_new_tokens": 8, **setting}, eos_token_id=(2, 4), decoder_start_token_id=2
            )
            chain = ours.build(params)
            pre, masking, post = ours.split(chain)
            assert pre == [] and post == [] and masking == chain
            rows, length = int(rng.integers(1, 4)), int(rng.integers(1, 10))
            ids, scores = random_case(rng, rows, length)
            for processor in masking:
                processor.mark(ids.numpy(), masks, start)
            parts.append(scores)
            want.append(ours.apply(masking, ids, scores.clone()))
            start += rows
        got = masks.apply(torch.cat(parts))
        torch.testing.assert_close(got, torch.cat(want), rtol=0, atol=0)


def test_penalties_and_warps_of_many_requests_equal_each_alone(rng):
    """Repetition penalties, temperatures, top-k and top-p of requests with different values and
    token counts, applied once to the whole batch (engine/sampler.py's path), give each request's
    rows, to the bit, what transformers' own processors give them alone."""
    settings = [
        dict(repetition_penalty=1.3, temperature=0.7, top_k=5, top_p=0.9),
        dict(repetition_penalty=0.8, top_k=0, top_p=0.8),
        dict(top_k=50),  # more than the vocabulary: keeps all
        dict(temperature=2.5, top_k=3),
        dict(repetition_penalty=2.0, top_k=0, temperature=0.3),
        dict(top_p=0.05, top_k=0),
        dict(repetition_penalty=1.1, temperature=0.9, top_k=7, top_p=0.6),
    ]
    for _ in range(20):
        penalties, warps, parts, want, start = ours.Penalties(), ours.Warps(), [], [], 0
        for setting in rng.permutation(settings):
            params = GenerationParams(**setting, do_sample=True, decoder_start_token_id=2)
            rows, length = int(rng.integers(1, 4)), int(rng.integers(1, 10))
            ids, scores = random_case(rng, rows, length)
            chain = []
            if params.repetition_penalty != 1.0:
                penalties.add(start, ids.numpy(), params.repetition_penalty)
                chain.append(hf.RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
            warps.add(range(start, start + rows), params)
            if params.temperature != 1.0:
                chain.append(hf.TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                chain.append(hf.TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                chain.append(hf.TopPLogitsWarper(params.top_p))
            parts.append(scores)
            want.append(hf.LogitsProcessorList(chain)(ids, scores.clone()))
            start += rows
        batch = torch.cat(parts)
        penalties.apply(batch)
        torch.testing.assert_close(warps.apply(batch), torch.cat(want), rtol=0, atol=0)


def test_split_keeps_transformers_order():
    params = GenerationParams(max_new_tokens=8, eos_token_id=(2,), decoder_start_token_id=2,
                              repetition_penalty=1.2, min_new_tokens=3, do_sample=True,
                              temperature=0.5, top_k=4)  # fmt: skip
    pre, masking, post = ours.split(ours.build(params))
    assert [type(p).__name__ for p in pre + masking + post] == [
        "RepetitionPenalty", "SuppressEosBelow", "Temperature", "TopK"
    ]  # fmt: skip
    assert len(pre) == 1 and len(masking) == 1
    with pytest.raises(ValueError, match="consecutive"):
        ours.split([ours.NoRepeatNGram(3), ours.Temperature(2.0), ours.NoRepeatNGram(2)])
