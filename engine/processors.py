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


# -- score transforms, each row with its own parameter -------------------------------------
# A parameter is a float (one request's rows) or a [rows, 1] / [rows] tensor holding each row's
# value as float32 (many requests' rows in one pass); every row gets, to the bit, what
# transformers computes for it with the float.


def divide(scores: torch.Tensor, by) -> torch.Tensor:
    """scores / by, computed as torch computes a division by a Python float: CUDA multiplies by
    the float32 reciprocal of a scalar, the CPU divides."""
    if isinstance(by, torch.Tensor) and scores.is_cuda:
        return scores * by.reciprocal()
    return scores / by


def penalize(scores: torch.Tensor, ids: torch.Tensor, penalty) -> torch.Tensor:
    """transformers' repetition penalty. ids [rows, length] int64: each row's tokens so far (a
    row shorter than the others is padded by repeating one of its own tokens)."""
    picked = torch.gather(scores, 1, ids)
    picked = torch.where(picked < 0, picked * penalty, divide(picked, penalty))
    return scores.scatter(1, ids, picked)


def top_k(scores: torch.Tensor, k) -> torch.Tensor:
    """Keep each row's k best (ties with the k-th included); k an int, or [rows] int64."""
    if isinstance(k, int):
        kth = torch.topk(scores, min(k, scores.shape[-1]))[0][..., -1, None]
    else:
        k = k.clamp(max=scores.shape[-1])
        kth = torch.topk(scores, int(k.max()))[0].gather(1, k[:, None] - 1)
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p(scores: torch.Tensor, top_p, keep: int) -> torch.Tensor:
    """Keep each row's smallest set of best tokens whose probability reaches top_p (at least
    `keep`). A tensor top_p holds each row's `1 - top_p` as float32 (see `Warps`)."""
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (top_p if isinstance(top_p, torch.Tensor) else 1 - top_p)
    remove[..., -keep:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)


class RepetitionPenalty:
    def __init__(self, penalty: float):
        self.penalty = penalty

    def __call__(self, ids, scores):
        return penalize(scores, ids, self.penalty)


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
        return divide(scores, self.temperature)


class TopK:
    def __init__(self, k: int, min_tokens_to_keep: int = 1):
        self.k = max(k, min_tokens_to_keep)

    def __call__(self, ids, scores):
        return top_k(scores, self.k)


class TopP:
    def __init__(self, top_p: float, min_tokens_to_keep: int = 1):
        self.top_p, self.keep = top_p, min_tokens_to_keep

    def __call__(self, ids, scores):
        return top_p(scores, self.top_p, self.keep)


# -- the transforms of many requests at once (engine/sampler.py) ---------------------------


class Penalties:
    """The repetition penalty of many requests' rows, applied in one gather and one scatter."""

    def __init__(self):
        self.rows: list[int] = []
        self.sequences: list[list[int]] = []  # each row's tokens so far
        self.penalties: list[float] = []

    def add(self, first_row: int, sequences: np.ndarray, penalty: float):
        """Rows first_row ... of one request: sequences [rows, length], the tokens so far."""
        for row, tokens in enumerate(sequences.tolist(), first_row):
            self.rows.append(row)
            self.sequences.append(tokens)
            self.penalties.append(penalty)

    def apply(self, scores: torch.Tensor):
        """Penalize the added rows of `scores` [rows, vocab] in place."""
        if not self.rows:
            return
        width = max(map(len, self.sequences))
        ids = np.array([s + s[:1] * (width - len(s)) for s in self.sequences])  # [n, width]
        device = scores.device
        rows = torch.tensor(self.rows, device=device)
        penalty = torch.tensor(self.penalties, dtype=scores.dtype, device=device)[:, None]
        scores[rows] = penalize(scores[rows], torch.as_tensor(ids, device=device), penalty)


class Warps:
    """Temperature, top-k and top-p of many sampling requests' rows, each row with its request's
    values, in one pass per kind over the rows that need it (transformers' order)."""

    def __init__(self):
        self.rows: list[int] = []
        self.temperature: list[float] = []
        self.top_k: list[int] = []  # 0: none
        self.top_p: list[float] = []

    def add(self, rows: range, params: GenerationParams):
        for row in rows:
            self.rows.append(row)
            self.temperature.append(params.temperature)
            self.top_k.append(params.top_k)
            self.top_p.append(params.top_p)

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [rows, vocab] -> the added rows' warped scores [added rows, vocab], in order."""
        device = scores.device
        warped = scores[torch.tensor(self.rows, device=device)]
        if any(t != 1.0 for t in self.temperature):  # x / 1 is x: rows without one pass as is
            t = torch.tensor(self.temperature, dtype=scores.dtype, device=device)
            warped = divide(warped, t[:, None])
        some = [i for i, k in enumerate(self.top_k) if k]
        if some:
            k = torch.tensor([self.top_k[i] for i in some], device=device)
            warped[some] = top_k(warped[some], k)
        some = [i for i, p in enumerate(self.top_p) if p < 1.0]
        if some:  # 1 - top_p in double, then float32: what transformers' comparison uses
            threshold = np.array([1 - self.top_p[i] for i in some], dtype=np.float32)
            warped[some] = top_p(warped[some], torch.tensor(threshold, device=device)[:, None], 1)
        return warped


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
