"""One decode step of a batch: a decoder run over every row, the tokens chosen on the device,
the step's one device->host copy, and the tokens settled into each request's search and events.

Greedy and sampling requests choose through engine/sampler.py (with prompt lookup's drafts,
engine/lookup.py), beam requests through engine/beam.py; the batch's self-attention cache then
continues with the beams' reorder (engine/batch.py).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ledserve.engine import beam
from ledserve.engine.batch import DecodeBatch
from ledserve.engine.lookup import Drafts
from ledserve.engine.runtime import Runtime
from ledserve.engine.sampler import NON_FINITE, Transfer, choose_tokens, settle_tokens
from ledserve.engine.search import TokenSearch


@dataclass
class StepDone:
    rows: int  # rows the decoder ran (drafted positions included)
    drafted: int  # prompt lookup: drafted tokens verified in the run
    accepted: int  # those greedy kept


def step_batch(runtime: Runtime, batch: DecodeBatch, pad_token_id: int,
                beside: Callable | None = None) -> StepDone:  # fmt: skip
    """One step of every request in `batch`. `beside(run)`: calls `run()`, the decoder run, and
    returns its result (the engine serves arrivals meanwhile); None: called here."""
    step = Drafts(batch.requests, pad_token_id)  # prompt lookup's, if any
    encoder_mask, cross = batch.cross.bound()

    def run():
        return runtime.decode(step.tokens, batch.cache, encoder_mask, cross, batch.request_rows,
                              batch.row_slots, step.new_mask)  # fmt: skip

    logits, present = beside(run) if beside else run()
    picks, beams = [], []  # (request, its rows): greedy and sampling; beam search
    for r, rows in batch.row_spans():
        (picks if isinstance(r.search, TokenSearch) else beams).append((r, rows))
    # [rows + verified draft positions, vocab]: each row's first position, then the drafts'
    logits, verified = step.scores(logits, picks)
    # [rows] bool, before any processor's -inf: a row holding an inf or a NaN sums to one
    # (in float32, so fp16 logits cannot overflow the sum); 40x cheaper than isfinite().all()
    finite = torch.isfinite(logits.sum(dim=-1, dtype=torch.float32))
    transfer = Transfer()  # the step's one device->host copy
    at_finite = transfer.add(finite)
    tokens, errors, scored = choose_tokens(logits, picks + verified, transfer)
    at_tokens = transfer.add(tokens)
    proposals = beam.propose_all(logits, beams) if beams else []
    at_proposals = [transfer.add(p) if isinstance(p, torch.Tensor) else p for p in proposals]
    host = transfer.fetch()
    finite = host[at_finite].astype(bool)
    plain, own = step.settle(picks, host[at_tokens].astype(np.int64), finite, errors,
                             NON_FINITE)  # fmt: skip
    settle_tokens(plain, own, finite, errors, {k: host[i] for k, i in scored.items()})
    step.keep(present)
    vocab = logits.shape[-1]
    reorder = np.arange(present.rows)  # each row's source row in present
    for (r, rows), proposal in zip(beams, at_proposals, strict=True):
        if isinstance(proposal, Exception):  # this request only; the others go on
            r.fail(proposal)
            continue
        own = host[proposal]
        if not finite[rows].all():
            r.fail(NON_FINITE)
            continue
        try:
            order = r.search.settle(own, vocab)
        except Exception as e:
            r.fail(e)
            continue
        reorder[rows] = np.arange(rows.start, rows.stop)[order]
        if not r.search.done:
            r.emit_progress()
    batch.advance(present, reorder, compact=bool(step.drafts))
    return StepDone(present.rows, step.drafted, sum(step.accepted.values()))
