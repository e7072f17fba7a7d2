"""Token choice for one request: greedy and sampling (beam search is engine/beam.py).

A search owns its request's decoder rows. Each step it takes those rows' logits (on the device,
where processors and the choice run) and returns which of its previous rows each row continues
(the KV-cache reorder; identity here); only the chosen token ids come to the host. Semantics
follow transformers' `_sample` (greedy when do_sample is False).
"""

import numpy as np
import torch

from ledserve.engine import lookup, processors
from ledserve.engine.params import GenerationParams


def token_scores(scores: torch.Tensor, chosen: torch.Tensor, top_n: int) -> torch.Tensor:
    """scores [rows, vocab] (processed) and chosen [rows] int64 on the device -> [rows, 1 + 2 *
    top_n] float64: each chosen token's log-probability under the processed distribution, then
    the top_n best log-probabilities and their token ids (float64 holds ids exactly)."""
    logprobs = scores.float().log_softmax(dim=-1)
    parts = [logprobs.gather(1, chosen[:, None])]
    if top_n:
        best = torch.topk(logprobs, top_n)
        parts += [best.values, best.indices]
    return torch.cat([p.double() for p in parts], dim=1)


class Search:
    """Common state: the decoder tokens of every row, the start token included, and with
    output_scores each generated token's scores ([rows, generated, 1 + 2 * top_n] float64, see
    `token_scores`; NaN for a finished row's padding)."""

    def __init__(self, params: GenerationParams, rows: int, diagnostics: bool = False,
                 source: np.ndarray | None = None, stops=None):  # fmt: skip
        """`source`: the request's input ids (encoder n-gram bans and repetition penalty);
        `stops`: its engine/stops.StopStrings, if any."""
        self.params = params
        self.diagnostics = diagnostics  # record `margin` (costs a device->host copy a step)
        self.chain = processors.build(params, source)  # transformers' processors, its order
        self.stops = stops
        self.max_length = params.max_length
        self.top_n = params.top_n_tokens
        width = 1 + 2 * self.top_n
        self.scores = np.zeros((rows, 0, width)) if params.scored else None
        self.eos = np.array(params.eos_token_id, dtype=np.int64)
        self.pad = (
            params.pad_token_id if params.pad_token_id is not None else params.eos_token_id[0]
        )
        self.sequences = np.full((rows, 1), params.decoder_start_token_id, dtype=np.int64)
        self.done = False
        # With diagnostics, the smallest score gap behind any choice made so far: where it is
        # ~1e-6, another runtime's rounding (ONNX Runtime vs PyTorch) may choose differently.
        self.margin = np.inf
        self._generator: torch.Generator | None = None  # made on the logits' device at first use

    def _note_margin(self, ordered: np.ndarray):
        """ordered: scores sorted best first, around the choices just made."""
        finite = ordered[np.isfinite(ordered) & (ordered > -1e8)]
        if finite.size > 1:
            self.margin = min(self.margin, float(np.min(finite[:-1] - finite[1:])))

    def generator(self, device) -> torch.Generator:
        """The request's own random generator on the logits' device, seeded once."""
        if self._generator is None:
            self._generator = torch.Generator(device=device)
            if self.params.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self.params.seed)
        return self._generator

    def process(self, scores: torch.Tensor) -> torch.Tensor:
        """[rows, vocab] float32 scores -> the request's processed scores, in transformers' order;
        the masking processors read the host's token ids (no device->host copy)."""
        return processors.apply(self.chain, self.sequences, scores)

    @property
    def wants_scores(self) -> bool:
        return self.scores is not None

    @property
    def rows(self) -> int:
        return self.sequences.shape[0]

    @property
    def next_tokens(self) -> np.ndarray:
        """[rows] the token each row feeds to the next decoder step."""
        return self.sequences[:, -1]


class TokenSearch(Search):
    """Greedy (argmax) or sampling, one independent sequence per row."""

    def __init__(self, params: GenerationParams, diagnostics: bool = False,
                 source: np.ndarray | None = None, stops=None):  # fmt: skip
        """`source`: the request's input ids, where prompt lookup finds its drafts."""
        rows = params.num_return_sequences if params.do_sample else 1
        super().__init__(params, rows, diagnostics, source, stops)
        # Rows only grow: `sequences` is a view of the first columns of a buffer with room for
        # max_length tokens, so a step writes one column instead of copying every token.
        self._buffer = np.empty((rows, max(self.max_length, 1)), dtype=np.int64)
        self._buffer[:, :1] = self.sequences
        self.finished = np.zeros(rows, dtype=bool)
        self.ends = np.zeros(rows, dtype=np.int64)  # a finished row's length (its EOS or stop)
        self.source = source
        self.lookup = params.prompt_lookup_num_tokens if source is not None else None

    def drafts(self) -> np.ndarray:
        """Prompt lookup's tokens for this step (empty without it): as many as fit before
        max_new_tokens with the model's own token after them."""
        room = self.max_length - self.sequences.shape[1] - 1
        if not self.lookup or self.done or room < 1:
            return np.zeros(0, np.int64)
        ngram = self.params.max_matching_ngram_size or 2
        return lookup.draft(self.source, self.sequences[0], min(self.lookup, room), ngram)

    def step(self, logits: torch.Tensor) -> np.ndarray:
        """logits: [rows, vocab] on the device -> row reorder indices (identity). The engine
        runs the same parts batched over a step's requests (engine/sampler.py)."""
        scores = self.process(logits.float())
        chosen = self.sample(scores) if self.params.do_sample else scores.argmax(dim=-1)
        self.note_margins(scores)
        own = token_scores(scores, chosen, self.top_n).cpu().numpy() if self.wants_scores else None
        self.advance(chosen.cpu().numpy(), own)  # the token ids cross
        return np.arange(self.rows)

    def sample(self, scores: torch.Tensor) -> torch.Tensor:
        """[rows] tokens drawn with the request's own generator (do_sample)."""
        return self.draw(scores.softmax(dim=-1))

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """probs [rows, vocab] -> [rows] tokens drawn with the request's own generator."""
        return torch.multinomial(probs, 1, generator=self.generator(probs.device))[:, 0]

    def note_margins(self, scores: torch.Tensor):
        if self.diagnostics and not self.params.do_sample:
            for row, top in enumerate(torch.topk(scores, 2).values.cpu().numpy()):
                if not self.finished[row]:
                    self._note_margin(top)

    def advance_many(self, tokens: np.ndarray):
        """Append several tokens to the one row (prompt lookup), up to its end."""
        for token in tokens:
            if self.done:
                break
            self.advance(np.array([token]))

    def advance(self, chosen: np.ndarray, scores: np.ndarray | None = None):
        """Append the chosen [rows] token ids (a finished row gets padding) and, with
        output_scores, their scores [rows, 1 + 2 * top_n]."""
        was = self.finished
        if was.any():
            chosen = np.where(was, self.pad, chosen)
        length = self.sequences.shape[1] + 1
        self._buffer[:, length - 1] = chosen
        self.sequences = self._buffer[:, :length]
        if self.scores is not None:
            scores = np.where(was[:, None], np.nan, scores)
            self.scores = np.concatenate([self.scores, scores[:, None]], axis=1)
        finished = was | (chosen[:, None] == self.eos).any(axis=1)  # np.isin: 10x the time
        if self.stops is not None:
            for row in np.flatnonzero(~finished):
                finished[row] = self.stops.hit(self.sequences[row])
        self.ends[finished & ~was] = length
        self.finished = finished
        self.done = bool(finished.all()) or length >= self.max_length

    def lengths(self) -> np.ndarray:
        """Each row's length without padding: up to its EOS or stop string."""
        return np.where(self.finished, self.ends, self.sequences.shape[1])

    def results(self) -> list[list[int]]:
        """Each row's tokens, start token first, cut after its EOS or stop (no padding)."""
        return [row[:n].tolist() for row, n in zip(self.sequences, self.lengths(), strict=True)]

    def result_scores(self) -> list[np.ndarray] | None:
        """With output_scores, each result's token scores [generated, 1 + 2 * top_n]."""
        if self.scores is None:
            return None
        return [row[: n - 1] for row, n in zip(self.scores, self.lengths(), strict=True)]
