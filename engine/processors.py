"""Logits processors with transformers' semantics and order, batched over a step's rows.

A request's chain (`build`) holds the processors its parameters need, in transformers' order. A
`Processing` gathers the chains of many requests, each at its rows of one [rows, vocab] float32
score tensor on the device, and applies them kind by kind in that same fixed order: one pass per
kind over the rows that need it, each row with its own request's values, so every row gets, to
the bit, what transformers computes for it alone. Vocabulary-sized work never leaves the device.

Two kinds of processor: transforms (engine/warpers.py: penalties, temperature, top-k, ...) and
masking ones here, which read only the host's token ids and `mark` bans and forced tokens into a
`Masks` written into the scores in one indexed write. Each processor is also a callable
`(ids, scores) -> scores` on its own (ids [rows, length] int64, the start token included).
"""

from collections import defaultdict

import numpy as np
import torch

from ledserve.engine import warpers
from ledserve.engine.params import GenerationParams

NEG_INF = float("-inf")


class Masks:
    """Banned tokens (-inf) and forced tokens (the row -inf but them, at 0) of many rows, written
    into scores by two indexed writes; forcing comes after the bans (transformers' order), and a
    later forcing of a row replaces an earlier one."""

    def __init__(self):
        self.rows: list[int] = []  # banned (row, token) pairs
        self.tokens: list[int] = []
        self.forced: dict[int, list[int]] = {}  # row -> its only allowed tokens

    def ban(self, row: int, tokens):
        tokens = list(tokens)
        self.rows += [row] * len(tokens)
        self.tokens += tokens

    def force(self, row: int, tokens: list[int]):
        self.forced[row] = tokens

    def extend(self, other: "Masks"):
        """Add another's bans and forced tokens (its rows are rows of the same scores)."""
        self.rows += other.rows
        self.tokens += other.tokens
        self.forced.update(other.forced)

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
    """A processor that only bans or forces tokens, from the host's token ids. `late` ones come
    after the exponential decay length penalty in transformers' order (the token suppressions)."""

    late = False

    def mark(self, sequences: np.ndarray, masks: Masks, first_row: int = 0):
        """Record the bans / forced tokens of rows `first_row ...` (sequences [rows, length])."""
        raise NotImplementedError

    def __call__(self, ids, scores):
        masks = Masks()
        self.mark(ids.cpu().numpy(), masks)  # token ids only cross to the host
        return masks.apply(scores.clone())


def _ngrams(tokens: list[int], n: int) -> dict[tuple, list[int]]:
    """Each (n - 1)-token prefix of `tokens` -> the tokens that followed it."""
    found = defaultdict(list)
    for i in range(len(tokens) - n + 1):
        found[tuple(tokens[i : i + n - 1])].append(tokens[i + n - 1])
    return found


class NoRepeatNGram(Masking):
    def __init__(self, size: int):
        self.size = size

    def mark(self, sequences, masks, first_row=0):
        n, length = self.size, sequences.shape[1]
        if length + 1 < n:
            return
        for row, tokens in enumerate(sequences.tolist(), first_row):
            masks.ban(row, _ngrams(tokens, n).get(tuple(tokens[length + 1 - n :]), ()))


class EncoderNoRepeatNGram(Masking):
    """No n-gram of the input (`source`, the request's input ids) may be generated."""

    def __init__(self, size: int, source: np.ndarray):
        self.size, self.banned = size, _ngrams(np.asarray(source).tolist(), size)

    def mark(self, sequences, masks, first_row=0):
        n, length = self.size, sequences.shape[1]
        if length + 1 < n:
            return
        for row, tokens in enumerate(sequences.tolist(), first_row):
            masks.ban(row, self.banned.get(tuple(tokens[length + 1 - n :]), ()))


class BadWords(Masking):
    """transformers' NoBadWords: a sequence's last token is banned where the tokens before it
    end the row (one-token sequences always, a lone EOS never)."""

    def __init__(self, words, eos: tuple[int, ...]):
        words = {tuple(w) for w in words if not (len(w) == 1 and w[0] in eos)}
        self.always = sorted(w[0] for w in words if len(w) == 1)
        self.after: dict[int, dict[tuple, list[int]]] = defaultdict(lambda: defaultdict(list))
        for w in words - {(t,) for t in self.always}:
            self.after[len(w) - 1][w[:-1]].append(w[-1])  # prefix length -> prefix -> tokens

    def mark(self, sequences, masks, first_row=0):
        length = sequences.shape[1]
        for row, tokens in enumerate(sequences.tolist(), first_row):
            masks.ban(row, self.always)
            for n, prefixes in self.after.items():
                if n < length:  # transformers skips sequences longer than the row
                    masks.ban(row, prefixes.get(tuple(tokens[length - n :]), ()))


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


class Suppress(Masking):
    """suppress_tokens (every step, `at` None) and begin_suppress_tokens (at decoder length
    `at`)."""

    late = True

    def __init__(self, tokens, at: int | None = None):
        self.tokens, self.at = sorted(set(tokens)), at

    def mark(self, sequences, masks, first_row=0):
        if self.at is None or sequences.shape[1] == self.at:
            for row in range(first_row, first_row + sequences.shape[0]):
                masks.ban(row, self.tokens)


EARLY, LATE = "masks", "late masks"
# transformers' order of the kinds (its _get_logits_processor), masks where theirs come
ORDER = (
    warpers.EncoderRepetitionPenalty, warpers.RepetitionPenalty, EARLY,
    warpers.ExponentialDecay, LATE, warpers.Temperature, warpers.TopK, warpers.TopP,
    warpers.MinP, warpers.Typical, warpers.EpsilonCutoff, warpers.EtaCutoff, warpers.Renormalize,
)  # fmt: skip


def build(params: GenerationParams, source: np.ndarray | None = None) -> list:
    """The logits processors transformers' generate would apply, in its order. `source`: the
    request's input ids (for the encoder n-gram ban and the encoder repetition penalty)."""
    max_length, eos = params.max_length, params.eos_token_id
    chain = []
    if params.encoder_repetition_penalty != 1.0 and source is not None:
        chain.append(warpers.EncoderRepetitionPenalty(params.encoder_repetition_penalty, source))
    if params.repetition_penalty != 1.0:
        chain.append(warpers.RepetitionPenalty(params.repetition_penalty))
    if params.no_repeat_ngram_size > 0:
        chain.append(NoRepeatNGram(params.no_repeat_ngram_size))
    if params.encoder_no_repeat_ngram_size > 0 and source is not None:
        chain.append(EncoderNoRepeatNGram(params.encoder_no_repeat_ngram_size, source))
    if params.bad_words_ids:
        chain.append(BadWords(params.bad_words_ids, eos))
    if eos and params.min_length > 0:
        chain.append(SuppressEosBelow(params.min_length, 0, eos))
    if eos and params.min_new_tokens > 0:
        chain.append(SuppressEosBelow(params.min_new_tokens, 1, eos))
    if params.forced_bos_token_id is not None:
        chain.append(ForceToken([params.forced_bos_token_id], at=1))
    if params.forced_eos_token_id is not None:
        forced = params.forced_eos_token_id
        chain.append(ForceToken([forced] if isinstance(forced, int) else forced, max_length - 1))
    if params.exponential_decay_length_penalty is not None and eos:
        start, factor = params.exponential_decay_length_penalty
        chain.append(warpers.ExponentialDecay(start + 1, factor, eos))  # + the start token
    if params.suppress_tokens:
        chain.append(Suppress(params.suppress_tokens))
    if params.begin_suppress_tokens:
        at = 1 if params.forced_bos_token_id is None else 2
        chain.append(Suppress(params.begin_suppress_tokens, at))
    if params.do_sample:
        chain += warpers.sampling(params)
    if params.renormalize_logits:
        chain.append(warpers.Renormalize())
    return chain


class Processing:
    """The chains of many requests' rows, applied to one score tensor kind by kind."""

    def __init__(self):
        self.members: dict[type, list] = defaultdict(list)  # kind -> [(row, processor, tokens)]
        self.masks = {EARLY: Masks(), LATE: Masks()}

    def add(self, first_row: int, chain: list, sequences: np.ndarray):
        """A request's chain for its rows first_row ... (sequences [rows, length], the tokens
        so far of each); raises what a processor raises, adding nothing then."""
        if not chain:  # most requests: nothing to process
            return
        members, masks = defaultdict(list), {EARLY: Masks(), LATE: Masks()}
        for processor in chain:
            if isinstance(processor, Masking):
                processor.mark(sequences, masks[LATE if processor.late else EARLY], first_row)
            else:
                rows = enumerate(sequences, first_row)
                members[type(processor)] += [(row, processor, tokens) for row, tokens in rows]
        for kind, added in members.items():
            self.members[kind] += added
        for name, own in masks.items():
            self.masks[name].extend(own)

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """Process the added rows of `scores` [rows, vocab] in place; returns it."""
        for kind in ORDER:
            if kind in self.masks:
                self.masks[kind].apply(scores)
            elif self.members.get(kind):
                kind.batch(scores, self.members[kind])
        return scores


def apply(chain: list, ids, scores: torch.Tensor) -> torch.Tensor:
    """One request's chain on its own, through the batched path: ids [rows, length], the
    tokens so far (a host array, or a tensor), scores [rows, vocab] (not modified)."""
    processing = Processing()
    processing.add(0, chain, ids.cpu().numpy() if isinstance(ids, torch.Tensor) else ids)
    return processing.apply(scores.clone())
