"""Token choice for every greedy and sampling row of a decoder step at once.

The processors of all the step's requests run in one batched pass (engine/processors.py:
each kind once over the rows that need it, each row with its own request's values, in
transformers' order), then one argmax covers the greedy rows and one softmax the sampling rows.
Each sampling request draws from its rows with its own generator, so a seed gives the same
tokens whatever shares the batch. Beam search is engine/beam.py; everything the host needs from
a step (tokens, beam candidates, token scores, finite-logits flags) crosses in one copy
(`Transfer`).
"""

import numpy as np
import torch

from ledserve.engine import processors
from ledserve.engine.request import Request
from ledserve.engine.search import token_scores

# A request whose rows' logits hold an inf or a NaN (a graph overflow) fails with this.
NON_FINITE = "the decoder produced non-finite logits (fp16 overflow?)"


class Transfer:
    """Device tensors that cross to the host in one copy: `add` each, then `fetch` once."""

    def __init__(self):
        self.parts: list[torch.Tensor] = []

    def add(self, tensor: torch.Tensor) -> int:
        """The tensor's index in `fetch`'s list."""
        self.parts.append(tensor)
        return len(self.parts) - 1

    def fetch(self) -> list[np.ndarray]:
        """Every added tensor as float64 on the host, in its shape (ids < 2**53 stay exact)."""
        flat = torch.cat([p.double().reshape(-1) for p in self.parts]).cpu().numpy()
        out, at = [], 0
        for part in self.parts:
            out.append(flat[at : at + part.numel()].reshape(part.shape))
            at += part.numel()
        return out


def choose_tokens(logits: torch.Tensor, picks: list[tuple[Request, slice]], transfer: Transfer
                  ) -> tuple[torch.Tensor, dict, dict]:  # fmt: skip
    """logits [rows, vocab] of the step (the picks' rows are processed in place); picks: the
    greedy and sampling requests with their rows -> every pick's tokens, in order, as one
    [their rows] int64 tensor on the device; the exceptions raised while processing a request's
    rows, by request id (that request only fails; `settle_tokens`); and, for requests with
    output_scores, the `transfer` index of their token scores, by request id."""
    processing, errors = processors.Processing(), {}
    for r, rows in picks:
        try:
            processing.add(rows.start, r.search.chain, r.search.sequences)
        except Exception as e:
            errors[r.id] = e
    processing.apply(logits)
    sampling = [(r, rows) for r, rows in picks if r.search.params.do_sample and r.id not in errors]
    if any(not r.search.params.do_sample for r, _ in picks):
        best = logits.argmax(dim=-1)  # [rows]
    offsets, at = {}, 0  # sampling request id -> its first row in probs
    for r, _ in sampling:
        offsets[r.id], at = at, at + r.rows
    if sampling:
        index = np.concatenate([np.arange(rows.start, rows.stop) for _, rows in sampling])
        probs = logits[torch.from_numpy(index).to(logits.device)].softmax(dim=-1)
    chosen, scored = [], {}  # per pick, [its rows] int64 on the device
    for r, rows in picks:
        search, tokens = r.search, None
        if r.id not in errors:
            try:
                if r.id in offsets:
                    tokens = search.draw(probs[offsets[r.id] : offsets[r.id] + r.rows])
                else:
                    if search.diagnostics:  # test diagnostics only: no slice otherwise
                        search.note_margins(logits[rows])
                    tokens = best[rows]
                if search.wants_scores:
                    own = token_scores(logits[rows], tokens, search.top_n)
                    scored[r.id] = transfer.add(own)
            except Exception as e:
                errors[r.id], tokens = e, None
        if tokens is None:  # the request fails; its rows get placeholders
            tokens = torch.zeros(r.rows, dtype=torch.int64, device=logits.device)
        chosen.append(tokens)
    empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
    return torch.cat(chosen) if chosen else empty, errors, scored


def settle_tokens(picks: list[tuple[Request, slice]], tokens: np.ndarray, finite: np.ndarray,
                  errors: dict, scores: dict | None = None):  # fmt: skip
    """`choose_tokens`' tokens on the host, with every row's finite-logits flag and the token
    scores of requests with output_scores (by request id, [rows, 1 + 2 * top_n]): each request
    appends its tokens and emits them, or fails (non-finite rows, or an exception)."""
    at, overflow = 0, not finite.all()
    for r, rows in picks:
        own, at = tokens[at : at + r.rows], at + r.rows
        if overflow and not finite[rows].all():  # a graph overflow must not pass as tokens
            r.fail(NON_FINITE)
        elif r.id in errors:
            r.fail(errors[r.id])
        else:
            try:
                r.search.advance(own, (scores or {}).get(r.id))
            except Exception as e:
                r.fail(e)
                continue
            if not r.search.done:
                r.emit_progress()
