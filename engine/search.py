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


class Search:
    """Common state: the decoder tokens of every row, the start token included."""

    def __init__(self, params: GenerationParams, rows: int, diagnostics: bool = False):
        self.params = params
        self.diagnostics = diagnostics  # record `margin` (costs a device->host copy a step)
        # transformers' processors, split where the engine batches the masking ones
        self.pre, self.masking, self.post = processors.split(processors.build(params))
        self.max_length = 1 + params.max_new_tokens
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
        if self.pre or self.post:
            ids = torch.as_tensor(self.sequences, device=scores.device)
        if self.pre:
            scores = processors.apply(self.pre, ids, scores)
        if self.masking:
            masks = processors.Masks()
            for processor in self.masking:
                processor.mark(self.sequences, masks)
            scores = masks.apply(scores.clone())
        return processors.apply(self.post, ids, scores) if self.post else scores

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
                 source: np.ndarray | None = None):  # fmt: skip
        """`source`: the request's input ids, where prompt lookup finds its drafts."""
        rows = params.num_return_sequences if params.do_sample else 1
        super().__init__(params, rows, diagnostics)
        self.finished = np.zeros(rows, dtype=bool)
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
        scores = self.scores(logits)
        chosen = self.sample(scores) if self.params.do_sample else scores.argmax(dim=-1)
        self.note_margins(scores)
        self.advance(chosen.cpu().numpy())  # the token ids cross
        return np.arange(self.rows)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """[rows, vocab] logits -> the request's processed scores, float32 on the device."""
        return self.process(logits.float())

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

    def advance(self, chosen: np.ndarray):
        """Append the chosen [rows] token ids (a finished row gets padding)."""
        chosen = np.where(self.finished, self.pad, chosen)
        self.sequences = np.concatenate([self.sequences, chosen[:, None]], axis=1)
        self.finished |= np.isin(chosen, self.eos)
        self.done = bool(self.finished.all()) or self.sequences.shape[1] >= self.max_length

    def results(self) -> list[list[int]]:
        """Each row's tokens, start token first, cut after its EOS (no padding)."""
        out = []
        for row in self.sequences.tolist():
            ends = [i for i, t in enumerate(row[1:], 1) if t in self.params.eos_token_id]
            out.append(row[: ends[0] + 1] if ends else row)
        return out
