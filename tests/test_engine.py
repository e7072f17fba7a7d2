"""The engine against transformers' generate on the same weights: a grid of fresh random cases."""

import pytest
import torch

from engine.engine import Engine


@pytest.fixture(scope="session")
def engine(exported):
    return Engine.from_artifacts(exported["fp32"], device="cpu")


def hf_generate(model, rows, globals_, **params):
    """transformers' sequences per row, cut after the first EOS of the generated part."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), model.config.pad_token_id)
    mask = torch.zeros_like(ids)
    glob = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        if globals_ is not None:
            glob[i, : len(r)] = torch.tensor(globals_[i])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, global_attention_mask=glob, **params
        )
    eos = model.config.eos_token_id
    result = []
    for seq in out.tolist():
        ends = [i for i, t in enumerate(seq[1:], 1) if t == eos]
        result.append(seq[: ends[0] + 1] if ends else seq)
    return result


def random_params(rng):
    beams = int(rng.choice([1, 2, 4]))
    params = dict(
        max_new_tokens=int(rng.integers(1, 24)),
        num_beams=beams,
        no_repeat_ngram_size=int(rng.choice([0, 0, 2, 3])),
        repetition_penalty=float(rng.choice([1.0, 1.0, 1.3, 0.8])),
        min_new_tokens=int(rng.choice([0, 0, 3, 8])),
    )
    if rng.random() < 0.2:
        params["forced_bos_token_id"] = 0
    if rng.random() < 0.2:
        params["forced_eos_token_id"] = 2
    if beams > 1:
        params.update(
            length_penalty=float(rng.choice([1.0, 0.0, 2.0, -0.5])),
            early_stopping=[True, False, "never"][int(rng.integers(3))],
            num_return_sequences=int(rng.integers(1, beams + 1)),
        )
    return params


def test_generate_matches_transformers_grid(checkpoint, engine, rng):
    _, model = checkpoint
    vocab = model.config.vocab_size
    ended_early = 0
    for case in range(30):
        params = random_params(rng)
        rows = [
            list(rng.integers(5, vocab, int(rng.integers(1, 60))))
            for _ in range(int(rng.integers(1, 4)))
        ]
        globals_ = None
        if rng.random() < 0.5:
            globals_ = [[int(i < 4) for i in range(len(r))] for r in rows]
        want = hf_generate(model, rows, globals_, **params)
        got = engine.generate(rows, globals_, **params)
        assert got == want, (case, params, rows)
        ended_early += sum(len(seq) < 1 + params["max_new_tokens"] for seq in want)
    # The grid must exercise EOS before the length limit (beam finishing, early stopping).
    print(f"{ended_early} sequences ended with EOS before max_new_tokens")
    assert ended_early >= 5
