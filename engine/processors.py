"""Logits processors with transformers' semantics and order, on the engine's device.

Each processor is a callable `(ids, scores) -> scores`: ids [rows, length] int64 are the decoder
tokens so far (the start token included, as transformers sees them), scores [rows, vocab] float32,
both torch tensors on the device where the logits are, so vocabulary-sized work never leaves it.
`build` returns only the processors a request's parameters need, in transformers' order.
"""

import torch

from ledserve.engine.params import GenerationParams

NEG_INF = float("-inf")


class RepetitionPenalty:
    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, ids, scores):
        picked = torch.gather(scores, 1, ids)
        picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return scores.scatter(1, ids, picked)


class NoRepeatNGram:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, ids, scores):
        n, length = self.size, ids.shape[1]
        if length + 1 < n:
            return scores
        scores = scores.clone()
        for row, tokens in enumerate(ids.tolist()):  # token ids only cross to the host
            prefix = tuple(tokens[length + 1 - n :])
            banned = [
                tokens[i + n - 1]
                for i in range(length - n + 1)
                if tuple(tokens[i : i + n - 1]) == prefix
            ]
            scores[row, banned] = NEG_INF
        return scores


class SuppressEosBelow:
    """transformers' MinLength (count with the start token) and MinNewTokensLength processors."""

    def __init__(self, minimum: int, skip: int, eos: tuple[int, ...]):
        self.minimum, self.skip, self.eos = minimum, skip, list(eos)

    def __call__(self, ids, scores):
        if ids.shape[1] - self.skip >= self.minimum:
            return scores
        scores = scores.clone()
        scores[:, self.eos] = NEG_INF
        return scores


class ForceToken:
    """Only `token` may come at decoder length `at`: forced BOS (at 1) and forced EOS (max - 1)."""

    def __init__(self, tokens, at: int):
        self.tokens, self.at = list(tokens), at

    def __call__(self, ids, scores):
        if ids.shape[1] != self.at:
            return scores
        forced = torch.full_like(scores, NEG_INF)
        forced[:, self.tokens] = 0
        return forced


class Temperature:
    def __init__(self, temperature: float):
        self.temperature = temperature

    def __call__(self, ids, scores):
        return scores / self.temperature


class TopK:
    def __init__(self, top_k: int, min_tokens_to_keep: int = 1):
        self.top_k = max(top_k, min_tokens_to_keep)

    def __call__(self, ids, scores):
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        return scores.masked_fill(scores < kth, NEG_INF)


class TopP:
    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p, self.keep = top_p, min_tokens_to_keep

    def __call__(self, ids, scores):
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - self.top_p)
        remove[..., -self.keep :] = False
        return scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def build(params: GenerationParams, prompt_length: int = 1) -> list:
    """The logits processors transformers' generate would apply, in its order."""
    max_length = prompt_length + params.max_new_tokens
    chain = []
    if params.repetition_penalty != 1.0:
        chain.append(RepetitionPenalty(params.repetition_penalty))
    if params.no_repeat_ngram_size > 0:
        chain.append(NoRepeatNGram(params.no_repeat_ngram_size))
    if params.eos_token_id and params.min_length > 0:
        chain.append(SuppressEosBelow(params.min_length, 0, params.eos_token_id))
    if params.eos_token_id and params.min_new_tokens > 0:
        chain.append(SuppressEosBelow(params.min_new_tokens, prompt_length, params.eos_token_id))
    if params.forced_bos_token_id is not None:
        chain.append(ForceToken([params.forced_bos_token_id], at=1))
    if params.forced_eos_token_id is not None:
        eos = params.forced_eos_token_id
        chain.append(ForceToken([eos] if isinstance(eos, int) else eos, at=max_length - 1))
    if params.do_sample:
        keep = max(2, 1 + len(params.eos_token_id)) if params.num_beams > 1 else 1
        if params.temperature != 1.0:
            chain.append(Temperature(params.temperature))
        if params.top_k:
            chain.append(TopK(params.top_k, keep))
        if params.top_p < 1.0:
            chain.append(TopP(params.top_p, keep))
    return chain


def apply(chain: list, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for processor in chain:
        scores = processor(ids, scores)
    return scores
