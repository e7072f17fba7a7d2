"""The decode batch: every live row of the engine, decoded by one decoder run per step.

It keeps, across steps, the requests in order, their rows' self-attention cache (rows in request
order; the decoder's `present` becomes the next step's past as is, beams reorder by one gather,
and nothing is copied for a step without a reorder), their cross K/V (engine/cross_cache.py, one
slot per request) and the row -> request indices the decoder graph takes. All of it changes only
when requests join (appended) or leave, never every step.
"""

import numpy as np
import torch

from ledserve.engine.cross_cache import CrossCache
from ledserve.engine.kv_cache import KVCache
from ledserve.engine.request import Request


class DecodeBatch:
    def __init__(self, device: torch.device, max_cross_tokens: int):
        self.device = device
        self.requests: list[Request] = []
        self.cache: KVCache | None = None  # [rows of all requests, in order]
        self.cross = CrossCache(device, max_cross_tokens)
        self.request_rows: torch.Tensor | None = None  # [cross slots, width] int64: their rows
        self.row_slots: torch.Tensor | None = None  # [rows] int64: slot * width + i

    def update(self, members: list[Request]):
        """The batch's requests become `members`: those already in it, in the same order, then
        the ones that join. Leaving rows are dropped from the cache, joining ones appended."""
        if [r.id for r in members] == [r.id for r in self.requests]:
            return
        staying = {r.id for r in members}
        kept = [np.arange(rows.start, rows.stop) for r, rows in self.row_spans() if r.id in staying]
        joining = members[len(kept) :]
        if [r.id for r in members[: len(kept)]] != [r.id for r in self.requests if r.id in staying]:
            raise RuntimeError("the decode batch's requests changed order; they join at its end")
        caches = []
        if kept:
            rows = np.concatenate(kept)
            caches.append(self.cache if len(rows) == self.cache.rows else self.cache.select(rows))
        caches += [r.cache for r in joining]
        for r in joining:
            r.cache = None  # the batch's cache holds its rows from now on
        self.cache = KVCache.concat(caches)
        self.requests = list(members)
        self._index(self.cross.update(self.requests))

    def row_spans(self) -> list[tuple[Request, slice]]:
        """Each request with its rows of the cache, in request order."""
        spans, start = [], 0
        for r in self.requests:
            spans.append((r, slice(start, start + r.rows)))
            start += r.rows
        return spans

    def split(self) -> list[KVCache]:
        """Each request's rows of the cache, in request order: for requests that ran apart and
        join another batch."""
        if len(self.requests) == 1:
            return [self.cache]
        return [self.cache.select(np.arange(rows.start, rows.stop)) for _, rows in self.row_spans()]

    def _index(self, slots: list[int]):
        """The decoder's request_rows and row_slots for requests in `slots`."""
        width = max(r.rows for r in self.requests)
        request_rows = np.zeros((self.cross.end, width), np.int64)  # a free slot reads row 0
        row_slots = np.zeros(sum(r.rows for r in self.requests), np.int64)
        for (r, span), slot in zip(self.row_spans(), slots, strict=True):
            rows = np.arange(span.start, span.stop)
            request_rows[slot] = np.resize(rows, width)  # a narrower request repeats its rows
            row_slots[rows] = slot * width + np.arange(r.rows)
        self.request_rows = torch.from_numpy(request_rows).to(self.device)
        self.row_slots = torch.from_numpy(row_slots).to(self.device)

    def advance(self, present: KVCache, reorder: np.ndarray, compact: bool = False):
        """After a decoder run: `present` [rows] continued by `reorder` (each row's source row in
        present; the identity costs nothing). `compact`: the run verified drafts, whose
        rejected slots are empty now; once most slots are empty, they are dropped."""
        identity = np.array_equal(reorder, np.arange(present.rows))
        self.cache = present if identity else present.select(reorder)
        if compact:
            self.cache = self.cache.compact(mostly_empty=True)
