"""Logits processors with transformers' semantics and order, on the engine's device.

Each processor is a callable `(ids, scores) -> scores`: ids [rows, length] int64 are the decoder
tokens so far (the start token included, as transformers sees them), scores [rows, vocab] float32,
both torch tensors on the device where the logits are, so vocabulary-sized work never leaves it.
`build` returns only the processors a request's parameters need, in transformers' order.

The masking processors (n-gram bans, minimum lengths, forced tokens) depend on the host's token
ids only; they also `mark` their bans and forced tokens into a `Masks`, which the engine fills from
every request of a step and writes into the whole batch's scores at once (engine/sampler.py).
"""

import numpy as np
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


class Masks:
    """Banned tokens (-inf) and forced tokens (the row -inf but them, at 0) of many rows, written
    into scores by two indexed writes; forcing comes after the bans (transformers' order), and a
    later forcing of a row replaces an earlier one."""

    def __init__(self):
        self.rows: list[int] = []  # banned (row, token) pairs
        self.tokens: list[int] = []
        self.forced: dict[int, list[int]] = {}  # row -> its only allowed tokens

    def ban(self, row: int, tokens: list[int]):
        self.rows += [row] * len(tokens)
        self.tokens += tokens

    def force(self, row: int, tokens: list[int]):
        self.forced[row] = tokens

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Writes into `scores` [rows, vocab] (in place) and returns it."""
        if self.rows:
            index = torch.tensor([self.rows, self.tokens], device=scores.device)
            scores[index[0], index[1]] = NEG_INF
        if self.forced:
            rows = torch.tensor(list(self.forced), device=scores.device)
            scores[rows] = NEG_INF
            pairs = [(row, t) for row, tokens in self.forced.items() for t in tokens]
            index = torch.tensor(pairs, device=scores.device).T
            scores[index[0], index[1]] = 0
        return scores


class Masking:
    """A processor that only bans or forces tokens, from the host's token ids."""

    def mark(self, sequences: np.ndarray, masks: Masks, first_row: int = 0):
        """Record the bans / forced tokens of rows `first_row ...` (sequences [rows, length])."""
        raise NotImplementedError

    def __call__(self, ids, scores):
        masks = Masks()
        self.mark(ids.cpu().numpy(), masks)  # token ids only cross to the host
        return masks.apply(scores.clone())


class NoRepeatNGram(Masking):
    def __init__(self, size: int):
        self.size = size

    def mark(self, sequences, masks, first_row=0):
        n, length = self.size, sequences.shape[1]
        if length + 1 < n:
            return
        for row, tokens in enumerate(sequences.tolist(), first_row):
            prefix = tuple(tokens[length + 1 - n :])
            banned = [
                tokens[i + n - 1]
                for i in range(length - n + 1)
                if tuple(tokens[i : i + n - 1]) == prefix
            ]
            masks.ban(row, banned)


class SuppressEosBelow(Masking):
    """transformers' MinLength (count with the start token) and MinNewTokensLength processors."""

    def __init__(self, minimum: int, skip: int, eos: tuple[int, ...]):
        self.minimum, self.skip, self.eos = minimum, skip, list(eos)

    def mark(self, sequences, masks, first_row=0):
        if sequences.shape[1] - self.skip < self.minimum:
            for row in range(first_row, first_row + sequences.shape[0]):
                masks.ban(row, self.eos)


class ForceToken(Masking):
    """Only `token` may come at decoder length `at`: forced BOS (at 1) and forced EOS (max - 1)."""

    def __init__(self, tokens, at: int):
        self.tokens, self.at = list(tokens), at

    def mark(self, sequences, masks, first_row=0):
        if sequences.shape[1] == self.at:
            for row in range(first_row, first_row + sequences.shape[0]):
                masks.force(row, self.tokens)


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


def split(chain: list) -> tuple[list, list, list]:
    """(transforms before the masking processors, the masking ones, transforms after them): the
    shape `build` gives every chain (repetition penalty first, temperature / top-k / top-p last)."""
    kinds = [isinstance(p, Masking) for p in chain]
    first = kinds.index(True) if True in kinds else len(chain)
    last = len(kinds) - kinds[::-1].index(True) if True in kinds else first
    if not all(kinds[first:last]):
        raise ValueError("a chain's masking processors must be consecutive")
    return chain[:first], chain[first:last], chain[last:]


def apply(chain: list, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for processor in chain:
        scores = processor(ids, scores)
    return scores
