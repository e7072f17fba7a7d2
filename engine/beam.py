"""Beam search for one request with transformers' exact semantics (its vectorised `_beam_search`,
batch size 1): top-k continuations, running beams, the finished set, length penalty, the three
early-stopping modes and their stopping heuristic, in float32 as transformers computes them.
"""

import numpy as np

from engine import processors
from engine.params import GenerationParams
from engine.search import Search

MASK = np.float32(-1.0e9)


class BeamSearch(Search):
    def __init__(self, params: GenerationParams, rng: np.random.Generator | None = None):
        super().__init__(params, params.num_beams)
        beams = params.num_beams
        self.keep = max(2, 1 + len(params.eos_token_id)) * beams  # candidates per step
        self.rng = rng if rng is not None else np.random.default_rng(params.seed)
        self.running_scores = np.full(beams, MASK, np.float32)
        self.running_scores[0] = 0.0
        # The finished set: `beams` slots, best first; placeholders score -1e9.
        self.finished_sequences = [[params.decoder_start_token_id]] * beams
        self.finished_scores = np.full(beams, MASK, np.float32)
        self.is_finished = np.zeros(beams, dtype=bool)
        self.improvable = True  # transformers' is_early_stop_heuristic_unsatisfied

    def _penalised(self, scores: np.ndarray, generated: int) -> np.ndarray:
        return (scores / np.float32(generated**self.params.length_penalty)).astype(np.float32)

    def step(self, logits: np.ndarray) -> np.ndarray:
        """logits: [beams, vocab] of the running beams -> index of the beam each new one extends."""
        params, beams = self.params, self.params.num_beams
        cur_len, vocab = self.sequences.shape[1], logits.shape[-1]
        log_probs = processors.log_softmax(logits.astype(np.float32))
        log_probs = processors.apply(self.chain, self.sequences, log_probs)
        accumulated = (log_probs + self.running_scores[:, None]).reshape(-1)  # [beams * vocab]

        if params.do_sample:
            probs = processors.softmax(accumulated.astype(np.float64))
            top = self.rng.choice(accumulated.size, self.keep, replace=False, p=probs)
        else:
            top = np.argsort(-accumulated, kind="stable")[: self.keep]
        top_scores = accumulated[top]
        self._note_margin(np.sort(accumulated)[::-1][: self.keep + 1])
        top_beams, top_tokens = top // vocab, top % vocab
        candidates = np.concatenate([self.sequences[top_beams], top_tokens[:, None]], axis=1)
        hits = np.isin(top_tokens, self.eos) | (cur_len + 1 >= self.max_length)

        # Running beams: the best candidates that did not stop.
        running = np.argsort(-(top_scores + hits.astype(np.float32) * MASK), kind="stable")[:beams]
        self.running_scores = (top_scores + hits.astype(np.float32) * MASK)[running]
        reorder = top_beams[running]
        self.sequences = candidates[running]

        # Finished set: merge the candidates among the first `beams` that stopped.
        just_finished = hits & (np.arange(self.keep) < beams)
        scores = self._penalised(top_scores, cur_len)  # generated length = cur_len + 1 - 1
        if self.is_finished.all() and params.early_stopping is True:
            scores = scores + MASK
        if not self.improvable:
            scores = scores + MASK
        scores = scores + (~just_finished).astype(np.float32) * MASK
        merged_scores = np.concatenate([self.finished_scores, scores])
        merged_sequences = self.finished_sequences + [list(c) for c in candidates]
        merged_finished = np.concatenate([self.is_finished, just_finished])
        best = np.argsort(-merged_scores, kind="stable")[:beams]
        self._note_margin(np.sort(merged_scores)[::-1][: beams + 1])
        self.finished_scores = merged_scores[best]
        self.finished_sequences = [merged_sequences[i] for i in best]
        self.is_finished = merged_finished[best]

        # Stopping heuristic, on the new length.
        cur_len += 1
        if params.early_stopping == "never" and params.length_penalty > 0.0:
            best_length = self.max_length - 1
        else:
            best_length = cur_len - 1
        best_possible = self._penalised(self.running_scores[:1], best_length)[0]
        worst = np.where(self.is_finished, self.finished_scores.min(), MASK)
        self.improvable = self.improvable and bool(np.any(best_possible > worst))
        open_beam = not (self.is_finished.all() and params.early_stopping is True)
        self.done = not (self.improvable and open_beam and not hits.all())
        if self.done and (self.finished_scores[: params.num_return_sequences] <= MASK / 10).any():
            # Fewer real hypotheses than returned sequences: the rest are -1e9 slots picked among
            # exact ties, whose order transformers leaves to torch.topk's implementation.
            self.margin = 0.0
        return reorder

    def results(self) -> list[list[int]]:
        """The best num_return_sequences finished hypotheses, start token first."""
        return [
            list(map(int, s)) for s in self.finished_sequences[: self.params.num_return_sequences]
        ]
