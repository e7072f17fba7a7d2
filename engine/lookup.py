"""Prompt-lookup speculative decoding for greedy requests: draft the next tokens by finding the
last generated tokens in the request's own input and proposing what followed them there; the
decoder scores the last token and every draft in the step's one run (several new tokens per row,
causally masked among themselves), and the longest prefix of drafts that greedy search itself
would have chosen is kept, with the model's next token after it.

Token-identical to plain greedy: each verified position is processed (repetition penalty, n-gram
bans, minimum lengths, forced EOS) with the tokens before it, drafts included, exactly as it would
be one step at a time; a draft is accepted only when it is the argmax there.
"""

from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view


def draft(source: np.ndarray, sequence: np.ndarray, count: int, ngram: int) -> np.ndarray:
    """Up to `count` tokens that followed, in `source` (the request's input ids), the longest
    suffix of `sequence` (its decoder tokens) of at most `ngram` tokens that occurs there (the
    most recent occurrence with a continuation); empty when none does."""
    for n in range(min(ngram, len(sequence)), 0, -1):
        if n >= len(source):
            continue
        matches = (sliding_window_view(source, n) == sequence[-n:]).all(axis=1)
        ends = np.flatnonzero(matches) + n  # where each occurrence's continuation starts
        ends = ends[ends < len(source)]
        if len(ends):
            return source[ends[-1] : ends[-1] + count]
    return source[:0]


def accepted(chosen: np.ndarray, drafts: np.ndarray) -> int:
    """chosen [1 + len(drafts)]: greedy's token at each verified position -> how many drafts
    greedy agrees with (a prefix)."""
    disagree = np.flatnonzero(chosen[: len(drafts)] != drafts)
    return int(disagree[0]) if len(disagree) else len(drafts)


class _Position:
    """A verified position as `sampler.choose_tokens` sees a request: one row whose tokens are the
    request's, then the drafts before this position."""

    wants_scores = False  # prompt lookup is refused with output_scores
    diagnostics = False  # no decision margins noted at drafted positions

    def __init__(self, search, sequence: np.ndarray):
        self.params, self.chain, self.sequences = search.params, search.chain, sequence


@dataclass(eq=False)
class Verified:
    """One verified position of a request, for `choose_tokens` (it reads id, rows and search)."""

    id: tuple
    search: _Position
    rows: int = 1


def positions(request, drafts: np.ndarray) -> list[Verified]:
    """The request's 1 + len(drafts) positions to verify: position j continues its tokens with
    drafts[:j]."""
    sequence = request.search.sequences  # [1, length]
    return [
        Verified((request.id, j), _Position(request.search, np.concatenate(
            [sequence, drafts[None, :j]], axis=1)))
        for j in range(len(drafts) + 1)
    ]  # fmt: skip


class Drafts:
    """One decoder step's drafts: the decoder's inputs ([rows] next tokens, or [rows, 1 + most
    drafts] with a mask when some request drafts), the verified positions' scores, and each
    drafting request's accepted tokens."""

    def __init__(self, requests: list, pad: int):
        self.requests = requests
        self.drafts: dict[int, tuple[int, np.ndarray]] = {}  # request id -> (its row, drafts)
        row = 0
        for r in requests:
            if getattr(r.search, "lookup", None):
                proposed = r.search.drafts()
                if len(proposed):
                    self.drafts[r.id] = (row, proposed)
            row += r.rows
        next_tokens = np.concatenate([r.search.next_tokens for r in requests])
        self.tokens, self.new_mask = next_tokens, None  # [rows]: a plain step
        self.accepted: dict[int, int] = {}  # request id -> drafts kept
        if not self.drafts:
            return
        self.width = 1 + max(len(d) for _, d in self.drafts.values())
        self.tokens = np.full((row, self.width), pad, np.int64)  # [rows, width]
        self.tokens[:, 0] = next_tokens
        self.new_mask = np.zeros_like(self.tokens)  # [rows, width]: 1 for a fed token
        self.new_mask[:, 0] = 1
        for at, proposed in self.drafts.values():
            self.tokens[at, 1 : 1 + len(proposed)] = proposed
            self.new_mask[at, 1 : 1 + len(proposed)] = 1

    @property
    def drafted(self) -> int:
        return sum(len(d) for _, d in self.drafts.values())

    def scores(self, logits: torch.Tensor, picks: list) -> tuple[torch.Tensor, list]:
        """The decoder's logits ([rows, vocab], or [rows, width, vocab]) -> [rows + verified
        positions, vocab]: every row's first position, then each drafting pick's positions
        1 ... drafts; and those positions' picks (for sampler.choose_tokens)."""
        if not self.drafts:
            return logits, []
        rows = logits.shape[0]
        extra, index = [], []
        for r, _ in picks:
            if r.id in self.drafts:
                row, proposed = self.drafts[r.id]
                for j, position in enumerate(positions(r, proposed)[1:], 1):
                    extra.append((position, slice(rows + len(index), rows + len(index) + 1)))
                    index.append(row * self.width + j)
        at = torch.as_tensor(index, dtype=torch.int64, device=logits.device)
        flat = logits.flatten(0, 1)
        return torch.cat([logits[:, 0], flat.index_select(0, at)]), extra

    def settle(self, picks: list, tokens: np.ndarray, finite: np.ndarray, errors: dict,
               non_finite: str) -> tuple[list, np.ndarray]:  # fmt: skip
        """tokens: greedy's and sampling's choice for every pick's rows, then for the verified
        positions (as `scores` laid them out); finite: every row's and position's flag. Each
        drafting request keeps greedy's tokens up to its first rejected draft (or fails with
        `non_finite` or its error); returns the other picks and their tokens (for
        sampler.settle_tokens)."""
        if not self.drafts:
            return picks, tokens
        plain, kept = [], []
        at, extra_token = 0, sum(r.rows for r, _ in picks)
        extra_row = len(finite) - self.drafted
        for r, rows in picks:
            own, at = tokens[at : at + r.rows], at + r.rows
            if r.id not in self.drafts:
                plain.append((r, rows))
                kept.append(own)
                continue
            proposed = self.drafts[r.id][1]
            k = len(proposed)
            chosen = np.concatenate([own, tokens[extra_token : extra_token + k]])
            ok = finite[rows].all() and finite[extra_row : extra_row + k].all()
            extra_token, extra_row = extra_token + k, extra_row + k
            failures = [errors.get(r.id), *(errors.get((r.id, j)) for j in range(1, k + 1))]
            error = next((e for e in failures if e is not None), None)
            if not ok:
                r.fail(non_finite)
            elif error is not None:
                r.fail(error)
            else:
                self.accepted[r.id] = accepted(chosen, proposed)
                try:
                    r.search.advance_many(chosen[: self.accepted[r.id] + 1])
                except Exception as e:
                    r.fail(e)
                    continue
                if not r.search.done:
                    r.emit_progress()
        return plain, np.concatenate(kept) if kept else tokens[:0]

    def keep(self, present):
        """The cache slots of rejected drafts (and of padding) become empty slots of `present`
        (in place)."""
        if not self.drafts:
            return
        mask = self.new_mask.copy()
        for request_id, (row, _) in self.drafts.items():
            mask[row, 1 + self.accepted.get(request_id, 0) :] = 0
        past = present.length - self.width
        present.mask[:, past:] = torch.as_tensor(mask, device=present.mask.device)
