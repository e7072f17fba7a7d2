"""The decoder self-attention KV cache of a set of rows; nothing else touches its arrays.

Rows may hold different numbers of tokens: a shorter row is padded at the front with empty
slots (attention mask 0), which the decoder graph ignores (positions count a row's own tokens).
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class KVCache:
    keys: list[np.ndarray]  # per layer [rows, heads, length, head_dim]
    values: list[np.ndarray]  # per layer [rows, heads, length, head_dim]
    mask: np.ndarray  # [rows, length] int64: 1 for a token of the row, 0 for an empty slot

    @classmethod
    def empty(cls, rows: int, layers: int, heads: int, head_dim: int, dtype) -> "KVCache":
        blank = np.zeros((rows, heads, 0, head_dim), dtype)
        return cls([blank] * layers, [blank] * layers, np.zeros((rows, 0), np.int64))

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    def update(self, keys: list[np.ndarray], values: list[np.ndarray], mask: np.ndarray):
        """Take the decoder's present arrays (past + the new tokens) and their mask."""
        self.keys, self.values, self.mask = keys, values, mask

    def select(self, rows) -> "KVCache":
        """These rows, in this order (a beam reorder is select(beam_indices))."""
        rows = np.asarray(rows)
        trim = self.length - int(self.mask[rows].sum(axis=1).max()) if len(rows) else 0
        return KVCache(
            [k[rows, :, trim:] for k in self.keys],
            [v[rows, :, trim:] for v in self.values],
            self.mask[rows, trim:],
        )

    reorder = select

    @staticmethod
    def concat(caches: list["KVCache"]) -> "KVCache":
        """Stack the rows of several caches, front-padding each to the longest."""
        length = max(c.length for c in caches)

        def pad(a: np.ndarray, axis: int, missing: int) -> np.ndarray:
            if not missing:
                return a
            widths = [(0, 0)] * a.ndim
            widths[axis] = (missing, 0)
            return np.pad(a, widths)

        layers = range(len(caches[0].keys))
        return KVCache(
            [
                np.concatenate([pad(c.keys[i], 2, length - c.length) for c in caches])
                for i in layers
            ],
            [
                np.concatenate([pad(c.values[i], 2, length - c.length) for c in caches])
                for i in layers
            ],
            np.concatenate([pad(c.mask, 1, length - c.length) for c in caches]),
        )
