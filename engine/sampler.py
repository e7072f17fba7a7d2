"""Token choice for every greedy and sampling row of a decoder step at once.

Each request's own score transforms run on its rows (the repetition penalty before the masks;
temperature, top-k and top-p after them, sampling requests only); the masking processors of all
requests (n-gram bans, minimum lengths, forced tokens) are written into the batch's logits in one
indexed write; the greedy rows take one argmax; the chosen tokens, and each row's finite-logits
flag, cross to the host in one copy. A sampling request draws with its own generator, so a seed
gives the same tokens whatever shares the batch. Beam search is engine/beam.py, per request.
"""

import numpy as np
import torch

from ledserve.engine import processors
from ledserve.engine.request import Request


def choose_tokens(logits: torch.Tensor, picks: list[tuple[Request, slice]],
                  finite: torch.Tensor) -> np.ndarray:  # fmt: skip
    """logits [rows, vocab] of the step (the picks' rows are processed in place); picks: the
    greedy and sampling requests with their rows; finite [rows] bool, on the device. Appends each
    request's tokens (a request whose rows are not finite, or whose processing raised, fails
    instead: that request only, the others go on) and returns `finite` on the host."""
    masks, errors = processors.Masks(), {}
    for r, rows in picks:
        search = r.search
        try:
            if search.pre:  # repetition penalty: before the masks, on this request's rows
                ids = torch.as_tensor(search.sequences, device=logits.device)
                logits[rows] = processors.apply(search.pre, ids, logits[rows])
            for processor in search.masking:
                processor.mark(search.sequences, masks, rows.start)
        except Exception as e:
            errors[r.id] = e
    masks.apply(logits)
    best = logits.argmax(dim=-1)  # [rows]
    chosen = []  # per pick, [its rows] int64 on the device
    for r, rows in picks:
        search = r.search
        try:
            if r.id not in errors and search.params.do_sample:
                scores = logits[rows]
                if search.post:  # temperature, top-k, top-p
                    ids = torch.as_tensor(search.sequences, device=logits.device)
                    scores = processors.apply(search.post, ids, scores)
                chosen.append(search.sample(scores))
                continue
            search.note_margins(logits[rows])
        except Exception as e:
            errors.setdefault(r.id, e)
        chosen.append(best[rows])
    host = torch.cat([*chosen, finite.long()]).cpu().numpy()  # the step's one copy
    tokens, finite = host[: -len(finite)], host[-len(finite) :].astype(bool)
    at = 0
    for r, rows in picks:
        own, at = tokens[at : at + r.rows], at + r.rows
        if not finite[rows].all():  # a graph overflow must not pass as tokens
            r.fail("the decoder produced non-finite logits (fp16 overflow?)")
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
    return finite
