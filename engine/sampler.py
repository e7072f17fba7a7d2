"""Token choice for every greedy and sampling row of a decoder step at once.

Each kind of processing runs once over the rows that need it, each row with its own request's
parameters, in transformers' order: the repetition penalty, then the masking processors (n-gram
bans, minimum lengths, forced tokens) in one indexed write, then one argmax for the greedy rows
and, for the sampling rows, temperature, top-k and top-p and one softmax. Each sampling request
draws from its rows with its own generator, so a seed gives the same tokens whatever shares the
batch. Beam search is engine/beam.py; the engine brings the step's tokens, beam candidates and
finite-logits flags to the host in one copy.
"""

import numpy as np
import torch

from ledserve.engine import processors
from ledserve.engine.request import Request

# A request whose rows' logits hold an inf or a NaN (a graph overflow) fails with this.
NON_FINITE = "the decoder produced non-finite logits (fp16 overflow?)"


def choose_tokens(logits: torch.Tensor, picks: list[tuple[Request, slice]]
                  ) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """logits [rows, vocab] of the step (the picks' rows are processed in place); picks: the
    greedy and sampling requests with their rows -> every pick's tokens, in order, as one
    [their rows] int64 tensor on the device, and the exceptions raised while processing a
    request's rows, by request id (that request only fails; `settle_tokens`)."""
    penalties, masks, errors = processors.Penalties(), processors.Masks(), {}
    for r, rows in picks:
        search = r.search
        try:
            if search.params.repetition_penalty != 1.0:
                penalties.add(rows.start, search.sequences, search.params.repetition_penalty)
            for processor in search.masking:
                processor.mark(search.sequences, masks, rows.start)
        except Exception as e:
            errors[r.id] = e
    penalties.apply(logits)
    masks.apply(logits)
    sampling = [(r, rows) for r, rows in picks if r.search.params.do_sample and r.id not in errors]
    if any(not r.search.params.do_sample for r, _ in picks):
        best = logits.argmax(dim=-1)  # [rows]
    if sampling:
        warps = processors.Warps()
        for r, rows in sampling:
            warps.add(range(rows.start, rows.stop), r.search.params)
        probs = warps.apply(logits).softmax(dim=-1)  # [sampling rows, vocab]
    chosen, at = [], 0  # per pick, [its rows] int64 on the device
    for r, rows in picks:
        search = r.search
        try:
            if r.id not in errors and search.params.do_sample:
                own, at = probs[at : at + r.rows], at + r.rows
                chosen.append(search.draw(own))
                continue
            if r.id not in errors:
                search.note_margins(logits[rows])
                chosen.append(best[rows])
                continue
        except Exception as e:
            errors.setdefault(r.id, e)
        chosen.append(torch.zeros(r.rows, dtype=torch.int64, device=logits.device))  # fails
    empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
    return torch.cat(chosen) if chosen else empty, errors


def settle_tokens(picks: list[tuple[Request, slice]], tokens: np.ndarray, finite: np.ndarray,
                  errors: dict):  # fmt: skip
    """`choose_tokens`' tokens on the host, with every row's finite-logits flag: each request
    appends its tokens and emits them, or fails (non-finite rows, or an exception)."""
    at = 0
    for r, rows in picks:
        own, at = tokens[at : at + r.rows], at + r.rows
        if not finite[rows].all():  # a graph overflow must not pass as tokens
            r.fail(NON_FINITE)
        elif r.id in errors:
            r.fail(errors[r.id])
        else:
            try:
                r.search.advance(own)
            except Exception as e:
                r.fail(e)
                continue
            if not r.search.done:
                r.emit_progress()
