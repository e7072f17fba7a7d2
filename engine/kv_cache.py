"""The decoder self-attention KV cache of a set of rows; nothing else touches its tensors.

Tensors live on the engine's device (the GPU on CUDA) and are bound to ONNX Runtime by pointer,
so a beam reorder or a batch change is a device gather, never a host round trip. Rows may hold
different numbers of tokens: a shorter row is padded at the front with empty slots (mask 0),
which the decoder graph ignores (positions count a row's own tokens).
"""

from dataclasses import dataclass

import torch
from torch.nn import functional


@dataclass
class KVCache:
    keys: list[torch.Tensor]  # per layer [rows, heads, length, head_dim]
    values: list[torch.Tensor]  # per layer [rows, heads, length, head_dim]
    mask: torch.Tensor  # [rows, length] int64: 1 for a token of the row, 0 for an empty slot

    @classmethod
    def empty(cls, rows, layers, heads, head_dim, dtype, device) -> "KVCache":
        blank = torch.zeros((rows, heads, 0, head_dim), dtype=dtype, device=device)
        mask = torch.zeros((rows, 0), dtype=torch.int64, device=device)
        return cls([blank] * layers, [blank] * layers, mask)

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def select(self, rows) -> "KVCache":
        """These rows, in this order (a beam reorder is select(beam_indices)); slots that are
        empty in every selected row are dropped."""
        index = torch.as_tensor(rows, dtype=torch.int64, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # leading slots empty in every row (empty slots may also sit between a row's tokens)
        slots = torch.arange(self.length, device=mask.device)
        first = torch.where(mask.any(dim=0), slots, self.length).min() if self.length else 0
        trim = int(first)
        return KVCache(
            [k.index_select(0, index)[:, :, trim:] for k in self.keys],
            [v.index_select(0, index)[:, :, trim:] for v in self.values],
            mask[:, trim:],
        )

    reorder = select

    @staticmethod
    def concat(caches: list["KVCache"]) -> "KVCache":
        """Stack the rows of several caches, front-padding each to the longest."""
        if len(caches) == 1:
            return caches[0]
        length = max(c.length for c in caches)

        def stack(tensors, lengths):
            # pad (head_dim: none, length: in front) of [rows, heads, length, head_dim]
            return torch.cat(
                [
                    functional.pad(t, (0, 0, length - n, 0))
                    for t, n in zip(tensors, lengths, strict=True)
                ]
            )

        lengths = [c.length for c in caches]
        layers = range(len(caches[0].keys))
        return KVCache(
            [stack([c.keys[i] for c in caches], lengths) for i in layers],
            [stack([c.values[i] for c in caches], lengths) for i in layers],
            torch.cat([functional.pad(c.mask, (length - c.length, 0)) for c in caches]),
        )

    def compact(self, mostly_empty: bool = False) -> "KVCache":
        """The same rows with their empty slots dropped (each row's tokens kept in order, rows
        front-padded to the longest): after prompt lookup's rejected drafts. `mostly_empty`:
        only once empty slots are most of the cache (else the cache as it is)."""
        length = self.length
        valid = self.mask != 0
        keep = int(valid.sum(dim=1).max()) if self.rows else 0
        if keep == length or (mostly_empty and 2 * keep >= length):
            return self
        # A stable sort puts each row's empty slots first and its tokens after, in order.
        order = torch.sort(valid.long(), dim=1, stable=True).indices[:, length - keep :]
        index = order[:, None, :, None]  # [rows, 1, keep, 1]

        def gather(t):
            return t.gather(2, index.expand(-1, t.shape[1], -1, t.shape[3]))

        return KVCache(
            [gather(k) for k in self.keys],
            [gather(v) for v in self.values],
            self.mask.gather(1, order),
        )
