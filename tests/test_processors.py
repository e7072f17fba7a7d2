"""engine/processors.py against transformers' own processors, one by one, on random inputs."""

import numpy as np
import pytest
import torch
from transformers.generation import logits_process as hf

from ledserve.engine import processors as ours
from ledserve.engine import warpers as w
from ledserve.engine.errors import InvalidRequest
from ledserve.engine.params import GenerationParams

VOCAB = 40
SOURCE = np.array([3, 7, 3, 9, 11, 7, 3, 9, 4])  # an input whose n-grams repeat


def random_case(rng, rows=5, length=9):
    ids = rng.integers(0, 12, (rows, length))  # a small id range makes repeats and n-grams likely
    scores = rng.normal(0, 3, (rows, VOCAB)).astype(np.float32)
    return torch.from_numpy(ids), torch.from_numpy(scores)


PAIRS = [
    (w.RepetitionPenalty(1.7), hf.RepetitionPenaltyLogitsProcessor(1.7)),
    (w.RepetitionPenalty(0.6), hf.RepetitionPenaltyLogitsProcessor(0.6)),
    (ours.NoRepeatNGram(2), hf.NoRepeatNGramLogitsProcessor(2)),
    (ours.NoRepeatNGram(3), hf.NoRepeatNGramLogitsProcessor(3)),
    (ours.SuppressEosBelow(12, 0, (2, 5)), hf.MinLengthLogitsProcessor(12, [2, 5])),
    (ours.SuppressEosBelow(9, 1, (2,)), hf.MinNewTokensLengthLogitsProcessor(1, 9, 2)),
    (ours.SuppressEosBelow(8, 1, (2,)), hf.MinNewTokensLengthLogitsProcessor(1, 8, 2)),
    (ours.ForceToken([7], at=1), hf.ForcedBOSTokenLogitsProcessor(7)),
    (ours.ForceToken([2], at=9), hf.ForcedEOSTokenLogitsProcessor(10, 2)),
    (w.Temperature(0.7), hf.TemperatureLogitsWarper(0.7)),
    (w.TopK(5), hf.TopKLogitsWarper(5)),
    (w.TopK(1, 3), hf.TopKLogitsWarper(1, min_tokens_to_keep=3)),
    (w.TopP(0.8), hf.TopPLogitsWarper(0.8)),
    (w.TopP(0.05, 2), hf.TopPLogitsWarper(0.05, min_tokens_to_keep=2)),
    (
        w.EncoderRepetitionPenalty(1.6, SOURCE),  # every row: transformers' ids given per row
        hf.EncoderRepetitionPenaltyLogitsProcessor(1.6, torch.tensor(SOURCE)[None].repeat(5, 1)),
    ),
    (
        w.EncoderRepetitionPenalty(0.7, SOURCE),
        hf.EncoderRepetitionPenaltyLogitsProcessor(0.7, torch.tensor(SOURCE)[None].repeat(5, 1)),
    ),
    (
        ours.EncoderNoRepeatNGram(2, SOURCE),
        hf.EncoderNoRepeatNGramLogitsProcessor(2, torch.tensor(SOURCE)[None]),
    ),
    (
        ours.EncoderNoRepeatNGram(3, SOURCE),
        hf.EncoderNoRepeatNGramLogitsProcessor(3, torch.tensor(SOURCE)[None]),
    ),
    (
        ours.EncoderNoRepeatNGram(1, SOURCE),
        hf.EncoderNoRepeatNGramLogitsProcessor(1, torch.tensor(SOURCE)[None]),
    ),
    (
        ours.BadWords([[4], [2], [3, 7], [9, 11, 5], [1, 1]], (2,)),
        hf.NoBadWordsLogitsProcessor([[4], [2], [3, 7], [9, 11, 5], [1, 1]], 2),
    ),
    (ours.Suppress([3, 8, 39]), hf.SuppressTokensLogitsProcessor([3, 8, 39])),
    (ours.Suppress([5, 6], at=2), hf.SuppressTokensAtBeginLogitsProcessor([5, 6], 2)),
    (w.ExponentialDecay(1 + 3, 1.4, (2, 5)), hf.ExponentialDecayLengthPenalty((3, 1.4), [2, 5], 1)),
    (w.ExponentialDecay(1 + 0, 0.8, (2,)), hf.ExponentialDecayLengthPenalty((0, 0.8), 2, 1)),
    (w.MinP(0.2), hf.MinPLogitsWarper(0.2)),
    (w.MinP(0.9, 3), hf.MinPLogitsWarper(0.9, min_tokens_to_keep=3)),
    (w.Typical(0.7), hf.TypicalLogitsWarper(0.7)),
    (w.Typical(0.2, 2), hf.TypicalLogitsWarper(0.2, min_tokens_to_keep=2)),
    (w.EpsilonCutoff(0.03), hf.EpsilonLogitsWarper(0.03)),
    (w.EpsilonCutoff(0.3, 2), hf.EpsilonLogitsWarper(0.3, min_tokens_to_keep=2)),
    (w.EtaCutoff(0.05), hf.EtaLogitsWarper(0.05)),
    (w.EtaCutoff(0.5, 2), hf.EtaLogitsWarper(0.5, min_tokens_to_keep=2)),
    (w.Renormalize(), hf.LogitNormalization()),
]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{type(p[0]).__name__}")
@pytest.mark.parametrize("length", [1, 2, 9])
def test_processor_matches_transformers(pair, length, rng):
    mine, theirs = pair
    for _ in range(20):
        ids, scores = random_case(rng, length=length)
        want = theirs(ids, scores.clone())
        torch.testing.assert_close(mine(ids, scores), want, rtol=1e-6, atol=1e-6)


def hf_chain(params: GenerationParams, source=None, rows: int = 1):
    """The processors transformers' generate builds for these parameters (encoder ids given for
    each of `rows` rows, where generate gives them for the first rows only)."""
    from transformers import GenerationConfig
    from transformers.generation.utils import GenerationMixin

    names = [
        f
        for f in vars(params)
        if f
        not in (
            "stop",
            "output_scores",
            "top_n_tokens",
            "prompt_lookup_num_tokens",
            "max_matching_ngram_size",
            "seed",
            "max_new_tokens",
        )
    ]
    values = {n: getattr(params, n) for n in names}
    values["eos_token_id"] = list(params.eos_token_id)
    values["bad_words_ids"] = [list(b) for b in params.bad_words_ids] or None
    values["suppress_tokens"] = list(params.suppress_tokens) or None
    values["begin_suppress_tokens"] = list(params.begin_suppress_tokens) or None
    config = GenerationConfig(max_length=params.max_length, **values)
    config._eos_token_tensor = torch.tensor(list(params.eos_token_id))
    source = np.zeros(3, np.int64) if source is None else source
    chain = GenerationMixin._get_logits_processor(
        GenerationMixin.__new__(GenerationMixin),
        config,
        input_ids_seq_length=1,
        encoder_input_ids=torch.tensor(source)[None].repeat(rows, 1),
        prefix_allowed_tokens_fn=None,
        logits_processor=None,
        device="cpu",
    )
    for processor in chain:
        if isinstance(processor, hf.ExponentialDecayLengthPenalty):
            processor.__class__ = ExponentialDecayLengthPenalty
    return chain


class ExponentialDecayLengthPenalty(hf.ExponentialDecayLengthPenalty):
    """transformers' decay length penalty, where a banned (-inf) EOS stays -inf instead of
    becoming NaN (see test_length_penalty_keeps_a_banned_eos_banned)."""

    def __call__(self, ids, scores):
        return torch.where(scores == float("-inf"), scores, super().__call__(ids, scores))


EVERYTHING = dict(
    encoder_repetition_penalty=1.4,
    repetition_penalty=1.3,
    no_repeat_ngram_size=2,
    encoder_no_repeat_ngram_size=3,
    bad_words_ids=((4,), (3, 7)),
    min_length=3,
    min_new_tokens=5,
    forced_bos_token_id=0,
    forced_eos_token_id=2,
    exponential_decay_length_penalty=(2, 1.3),
    suppress_tokens=(8, 9),
    begin_suppress_tokens=(10,),
    do_sample=True,
    temperature=0.8,
    top_k=10,
    top_p=0.9,
    min_p=0.05,
    typical_p=0.95,
    epsilon_cutoff=0.001,
    eta_cutoff=0.002,
    renormalize_logits=True,
)


def test_build_follows_transformers_order(rng):
    """The whole chain, as generate builds it, on the same inputs."""
    params = GenerationParams(max_new_tokens=12, eos_token_id=(2,), decoder_start_token_id=2,
                              **EVERYTHING)  # fmt: skip
    chain = hf_chain(params, SOURCE, rows=5)
    mine = ours.build(params, SOURCE)
    assert [type(p).__name__.replace("LogitsProcessor", "").replace("LogitsWarper", "")
            for p in chain] == [
        "EncoderRepetitionPenalty", "RepetitionPenalty", "NoRepeatNGram", "EncoderNoRepeatNGram",
        "NoBadWords", "MinLength", "MinNewTokensLength", "ForcedBOSToken", "ForcedEOSToken",
        "ExponentialDecayLengthPenalty", "SuppressTokens", "SuppressTokensAtBegin", "Temperature",
        "TopK", "TopP", "MinP", "Typical", "Epsilon", "Eta", "LogitNormalization",
    ]  # fmt: skip
    assert len(mine) == len(chain)
    for length in (1, 2, 4, 11, 12):
        ids, scores = random_case(rng, length=length)
        want = chain(ids, scores.clone())
        torch.testing.assert_close(ours.apply(mine, ids, scores), want, rtol=1e-6, atol=1e-6)


def test_length_penalty_keeps_a_banned_eos_banned():
    """Where min_new_tokens bans EOS while the decay length penalty already grows it,
    transformers computes -inf + inf = NaN (a NaN argmax picks that EOS); ours stays -inf."""
    decay, ban = w.ExponentialDecay(2, 1.5, (2,)), ours.SuppressEosBelow(6, 1, (2,))
    ids, scores = torch.zeros(1, 4, dtype=torch.int64), torch.zeros(1, VOCAB)
    processed = decay(ids, ban(ids, scores))
    assert processed[0, 2] == float("-inf") and processed.argmax() != 2
    theirs = hf.ExponentialDecayLengthPenalty((1, 1.5), 2, 1)(ids, ban(ids, scores))
    assert theirs[0, 2].isnan()


SETTINGS = [
    dict(repetition_penalty=1.3, temperature=0.7, top_k=5, top_p=0.9, do_sample=True),
    dict(repetition_penalty=0.8, top_k=0, top_p=0.8, do_sample=True, min_p=0.1),
    dict(top_k=50, do_sample=True, typical_p=0.6),  # top_k beyond the vocabulary keeps all
    dict(temperature=2.5, top_k=3, do_sample=True, num_beams=2),
    dict(repetition_penalty=2.0, top_k=0, temperature=0.3, do_sample=True, eta_cutoff=0.01),
    dict(top_p=0.05, top_k=0, do_sample=True, epsilon_cutoff=0.02, renormalize_logits=True),
    dict(no_repeat_ngram_size=2, min_new_tokens=6, encoder_no_repeat_ngram_size=2),
    dict(min_length=4, forced_bos_token_id=7, begin_suppress_tokens=(3, 4)),
    dict(forced_eos_token_id=3, no_repeat_ngram_size=3, suppress_tokens=(5, 6, 7)),
    dict(encoder_repetition_penalty=0.6, bad_words_ids=((3,), (7, 3), (1, 2, 3))),
    dict(exponential_decay_length_penalty=(1, 1.5), min_new_tokens=2, renormalize_logits=True),
    dict(exponential_decay_length_penalty=(0, 0.9), suppress_tokens=(2,)),
    dict(),
    EVERYTHING,
]


def test_processing_of_many_requests_equals_each_alone(rng):
    """Requests with different processors, values and token counts, processed together in one
    batched pass (the engine's path), give each request's rows what transformers' own chain
    gives them alone: to the bit, and within 1e-5 for the sampling warpers (acceptance)."""
    for _ in range(20):
        processing, parts, want, start = ours.Processing(), [], [], 0
        for setting in rng.permutation(np.array(SETTINGS, dtype=object)):
            params = GenerationParams(
                **{"max_new_tokens": 8, **setting}, eos_token_id=(2, 4), decoder_start_token_id=2
            )
            rows, length = int(rng.integers(1, 4)), int(rng.integers(1, 10))
            source = rng.integers(0, 12, int(rng.integers(1, 30)))
            ids, scores = random_case(rng, rows, length)
            processing.add(start, ours.build(params, source), ids.numpy())
            parts.append(scores)
            want.append(hf_chain(params, source, rows)(ids, scores.clone()))
            start += rows
        got = processing.apply(torch.cat(parts))
        torch.testing.assert_close(got, torch.cat(want), rtol=0, atol=1e-5, equal_nan=True)


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
        ({"guidance_scale": 1.5}, "unsupported generation parameter 'guidance_scale'"),
        ({"min_p": 1.5}, r"min_p must be in \[0, 1\], got 1.5"),
        ({"min_p": -0.1}, r"min_p must be in \[0, 1\], got -0.1"),
        ({"typical_p": 0.0}, "typical_p must be between 1e-06 and 1, got 0.0"),
        ({"epsilon_cutoff": 1.0}, r"epsilon_cutoff must be in \[0, 1\), got 1.0"),
        ({"eta_cutoff": -1.0}, "eta_cutoff must be between 0 and 1, got -1.0"),
        ({"encoder_repetition_penalty": 0.0}, "encoder_repetition_penalty must be between 0.01"),
        ({"encoder_no_repeat_ngram_size": -2}, "encoder_no_repeat_ngram_size must be between 0"),
        ({"suppress_tokens": [3, -1]}, "suppress_tokens must hold token ids between 0 and 99"),
        ({"begin_suppress_tokens": [100]}, "begin_suppress_tokens must hold token ids between"),
        ({"suppress_tokens": "3"}, "suppress_tokens must be a list of token ids"),
        ({"bad_words_ids": [[3], [-4, 5]]}, "bad_words_ids must hold token ids between 0 and 99"),
        ({"bad_words_ids": [[3], []]}, r"bad_words_ids\[1\] must hold 1 to 32 token ids, got 0"),
        ({"bad_words_ids": [[1]] * 1025}, "bad_words_ids must be a list of at most 1024"),
        ({"bad_words_ids": [3, 4]}, r"bad_words_ids\[0\] must be a list of token ids"),
        ({"stop": [""]}, r"stop\[0\] must be a string of 1 to 256 characters"),
        ({"stop": ["a"] * 17}, "stop must be a list of at most 16 strings"),
        ({"stop": ["x" * 257]}, r"stop\[0\] must be a string of 1 to 256 characters"),
        ({"top_n_tokens": 21}, "top_n_tokens must be between 0 and 20, got 21"),
        ({"max_length": 1}, "max_length must be between 2 and 64, got 1"),
        ({"max_length": 65}, "max_length must be between 2 and 64, got 65"),
        (
            {"exponential_decay_length_penalty": (0, 4.0), "max_new_tokens": 63},
            r"exponential_decay_length_penalty must be .* got \(0, 4.0\)",
        ),
        (
            {"exponential_decay_length_penalty": (-1, 1.1)},
            r"exponential_decay_length_penalty must be .* got \(-1, 1.1\)",
        ),
        ({"exponential_decay_length_penalty": [1]}, "exponential_decay_length_penalty must be"),
        (
            {"output_scores": True, "prompt_lookup_num_tokens": 3},
            "prompt_lookup_num_tokens cannot be combined with output_scores",
        ),
    ],
)
def test_bad_parameters_name_the_field_and_limit(override, message):
    with pytest.raises(InvalidRequest, match=message):
        GenerationParams.build(DEFAULTS, **LIMITS, **override)


def test_defaults_from_generation_config():
    params = GenerationParams.build({**DEFAULTS, "num_beams": 4, "length_penalty": 2.0}, **LIMITS)
    assert (params.max_new_tokens, params.num_beams, params.length_penalty) == (19, 4, 2.0)
    assert params.eos_token_id == (2,)
    with pytest.raises(InvalidRequest, match="'guidance_scale' \\(from generation_config\\)"):
        GenerationParams.build({**DEFAULTS, "guidance_scale": 3.0}, **LIMITS)


def test_max_length_counts_as_transformers_counts_it():
    """An encoder-decoder's max_length includes the decoder start token; max_new_tokens wins
    wherever it was set (transformers' precedence); a request's max_length overrides the
    generation_config's."""
    build = GenerationParams.build
    assert build(DEFAULTS, **LIMITS).max_new_tokens == 19
    assert build(DEFAULTS, **LIMITS, max_length=10).max_new_tokens == 9
    assert build(DEFAULTS, **LIMITS, max_length=10, max_new_tokens=30).max_new_tokens == 30
    config = {**DEFAULTS, "max_new_tokens": 7}
    assert build(config, **LIMITS, max_length=40).max_new_tokens == 7
    assert build(DEFAULTS, **LIMITS, max_length=10).max_length == 10
    assert build(DEFAULTS, **LIMITS, stop_strings="###").stop == ("###",)
