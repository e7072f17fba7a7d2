"""Token choice for one request: greedy and sampling (beam search is engine/beam.py).

A search owns its request's decoder rows. Each step it takes those rows' logits and returns which
of its previous rows each row continues (the KV-cache reorder; identity here) and the tokens the
rows feed next. Semantics follow transformers' `_sample` (greedy when do_sample is False).
"""

import numpy as np

from engine import processors
from engine.params import GenerationParams


class Search:
    """Common state: the decoder tokens of every row, the start token included."""

    def __init__(self, params: GenerationParams, rows: int):
        self.params = params
        self.chain = processors.build(params)
        self.max_length = 1 + params.max_new_tokens
        self.eos = np.array(params.eos_token_id, dtype=np.int64)
        self.pad = (
            params.pad_token_id if params.pad_token_id is not None else params.eos_token_id[0]
        )
        self.sequences = np.full((rows, 1), params.decoder_start_token_id, dtype=np.int64)
        self.done = False
        # Smallest score gap behind any choice made so far: where it is ~1e-6, another runtime's
        # rounding (ONNX Runtime vs PyTorch) may choose differently.
        self.margin = np.inf

    def _note_margin(self, ordered: np.ndarray):
        """ordered: scores sorted best first, around the choices just made."""
        finite = ordered[np.isfinite(ordered) & (ordered > -1e8)]
        if finite.size > 1:
            self.margin = min(self.margin, float(np.min(finite[:-1] - finite[1:])))

    @property
    def rows(self) -> int:
        return self.sequences.shape[0]

    @property
    def next_tokens(self) -> np.ndarray:
        """[rows] the token each row feeds to the next decoder step."""
        return self.sequences[:, -1]


class TokenSearch(Search):
    """Greedy (argmax) or sampling, one independent sequence per row."""

    def __init__(self, params: GenerationParams, rng: np.random.Generator | None = None):
        rows = params.num_return_sequences if params.do_sample else 1
        super().__init__(params, rows)
        self.rng = rng if rng is not None else np.random.default_rng(params.seed)
        self.finished = np.zeros(rows, dtype=bool)

    def step(self, logits: np.ndarray) -> np.ndarray:
        """logits: [rows, vocab] -> row reorder indices (identity)."""
        scores = processors.apply(self.chain, self.sequences, logits.astype(np.float32))
        if self.params.do_sample:
            probs = processors.softmax(scores.astype(np.float64))
            chosen = np.array([self.rng.choice(len(p), p=p) for p in probs], dtype=np.int64)
        else:
            chosen = scores.argmax(axis=-1)
            for row in np.flatnonzero(~self.finished):
                self._note_margin(-np.sort(-scores[row])[:2])
        chosen = np.where(self.finished, self.pad, chosen)
        self.sequences = np.concatenate([self.sequences, chosen[:, None]], axis=1)
        self.finished |= np.isin(chosen, self.eos)
        self.done = bool(self.finished.all()) or self.sequences.shape[1] >= self.max_length
        return np.arange(self.rows)

    def results(self) -> list[list[int]]:
        """Each row's tokens, start token first, cut after its EOS (no padding)."""
        out = []
        for row in self.sequences.tolist():
            ends = [i for i, t in enumerate(row[1:], 1) if t in self.params.eos_token_id]
            out.append(row[: ends[0] + 1] if ends else row)
        return out
