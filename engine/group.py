"""A decode group: the running requests with the same number of rows per request, which share one
decoder run per step (the decoder graph groups rows per request).

The group keeps, across steps, its rows' self-attention cache (the decoder's `present` becomes the
next step's past as is; beams reorder by one gather over the group's rows, and nothing is copied
for a step without a reorder) and its requests' cross K/V padded to the longest input. Both change
only when requests join (appended) or leave, never every step.
"""

import numpy as np
import torch
from torch.nn import functional

from ledserve.engine.kv_cache import KVCache
from ledserve.engine.request import Request


class DecodeGroup:
    def __init__(self, device: torch.device):
        self.device = device
        self.requests: list[Request] = []
        self.cache: KVCache | None = None  # [rows of all requests, in order]
        self.mask: torch.Tensor | None = None  # [requests, encoder_len] int64
        self.cross: list[torch.Tensor] = []  # per layer key, value: [requests, heads, len, dim]

    def update(self, members: list[Request]):
        """The group's requests become `members`: those already in it, in the same order, then
        the ones that join. Leaving rows are dropped from the cache, joining ones appended."""
        if [r.id for r in members] == [r.id for r in self.requests]:
            return
        staying = {r.id for r in members}
        kept, start = [], 0
        for r in self.requests:
            if r.id in staying:
                kept.append(np.arange(start, start + r.rows))
            start += r.rows
        joining = members[len(kept) :]
        if [r.id for r in members[: len(kept)]] != [r.id for r in self.requests if r.id in staying]:
            raise RuntimeError("a decode group's requests changed order; they only join at its end")
        caches = []
        if kept:
            rows = np.concatenate(kept)
            caches.append(self.cache if len(rows) == self.cache.rows else self.cache.select(rows))
        caches += [r.cache for r in joining]
        for r in joining:
            r.cache = None  # the group's cache holds its rows from now on
        self.cache = KVCache.concat(caches)
        self.requests = list(members)
        self._build_cross()

    def _build_cross(self):
        """Cross K/V and encoder mask of the requests, padded to the longest. The requests then
        hold views into the group's tensors, so each request's K/V exist once (twice only while
        a changed group is rebuilt)."""
        group = self.requests
        length = max(r.input_ids.size for r in group)
        mask = torch.zeros((len(group), length), dtype=torch.int64)
        for row, r in enumerate(group):
            mask[row, : r.input_ids.size] = 1
        if len(group) == 1:  # its own tensors (made contiguous once if they were views)
            cross = group[0].cross = [c.contiguous() for c in group[0].cross]
        else:
            cross = [
                torch.cat([_pad_sequence(r.cross[i], length) for r in group])
                for i in range(len(group[0].cross))
            ]
            for row, r in enumerate(group):
                r.cross = [c[row : row + 1, :, : r.input_ids.size] for c in cross]
        self.mask, self.cross = mask.to(self.device), cross

    def advance(self, present: KVCache, reorder: np.ndarray):
        """After a decoder run: `present` [rows] continued by `reorder` (each row's source row in
        present; the identity costs nothing)."""
        identity = np.array_equal(reorder, np.arange(present.rows))
        self.cache = present if identity else present.select(reorder)


def _pad_sequence(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """[1, heads, seq, head_dim] zero-padded at the end of seq to `length`."""
    return functional.pad(tensor, (0, 0, 0, length - tensor.shape[2]))
