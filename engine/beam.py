"""Beam search for one request with transformers' exact semantics (its vectorised `_beam_search`,
batch size 1): top-k continuations, running beams, the finished set, length penalty, the three
early-stopping modes and their stopping heuristic, in float32 as transformers computes them.
A step has two halves: `propose` on the device (the candidates), `settle` on the host (the
beams); the engine proposes for every beam request of a step after one log_softmax and one
batched pass of processors (`propose_all`) and brings all candidates to the host in the step's
one copy. A stop string ends a hypothesis as EOS does.
"""

import numpy as np
import torch

from ledserve.engine import processors
from ledserve.engine.params import GenerationParams
from ledserve.engine.search import Search, token_scores

MASK = np.float32(-1.0e9)


class BeamSearch(Search):
    def __init__(self, params: GenerationParams, diagnostics: bool = False,
                 source: np.ndarray | None = None, stops=None):  # fmt: skip
        super().__init__(params, params.num_beams, diagnostics, source, stops)
        beams = params.num_beams
        self.keep = max(2, 1 + len(params.eos_token_id)) * beams  # candidates per step
        self.running_scores = np.full(beams, MASK, np.float32)
        self.running_scores[0] = 0.0
        # The finished set: `beams` slots, best first; placeholders score -1e9.
        self.finished_sequences = [[params.decoder_start_token_id]] * beams
        self.finished_token_scores = [None] * beams  # with output_scores: as self.scores rows
        self.finished_scores = np.full(beams, MASK, np.float32)
        self.is_finished = np.zeros(beams, dtype=bool)
        self.improvable = True  # transformers' is_early_stop_heuristic_unsatisfied

    def _penalised(self, scores: np.ndarray, generated: int) -> np.ndarray:
        return (scores / np.float32(generated**self.params.length_penalty)).astype(np.float32)

    def propose(self, log_probs: torch.Tensor) -> torch.Tensor:
        """log_probs [beams, vocab] float32 on the device, processed (`process`, or the batched
        `propose_all`) -> the `keep` best candidates as one [2 * keep] float64 tensor on the
        device: their scores, then their flat indices (beam * vocab + token); float64 holds both
        exactly, so they cross in one copy. With output_scores, then each candidate's token
        scores [keep, 1 + 2 * top_n] (`search.token_scores`), flattened."""
        params = self.params
        beam_scores = torch.as_tensor(self.running_scores, device=log_probs.device)
        accumulated = (log_probs + beam_scores[:, None]).reshape(-1)  # [beams * vocab]
        if params.do_sample:
            generator = self.generator(log_probs.device)
            top = torch.multinomial(accumulated.softmax(-1), self.keep, generator=generator)
            top_scores = accumulated[top]
        else:
            top_scores, top = torch.topk(accumulated, self.keep)  # as transformers, ties too
        if self.diagnostics:
            self._note_margin(torch.topk(accumulated, self.keep + 1).values.cpu().numpy())
        parts = [top_scores.double(), top.double()]
        if self.wants_scores:  # each candidate's, from its beam's row: [keep, 1 + 2 * top_n]
            vocab = log_probs.shape[-1]
            beam_rows = torch.div(top, vocab, rounding_mode="floor")
            parts.append(token_scores(log_probs[beam_rows], top % vocab, self.top_n).reshape(-1))
        return torch.cat(parts)

    def settle(self, proposal: np.ndarray, vocab: int) -> np.ndarray:
        """proposal: `propose`'s candidates on the host -> index of the beam each new one
        extends; the running beams, the finished set and the stopping state move on."""
        params, beams = self.params, self.params.num_beams
        cur_len = self.sequences.shape[1]
        top_scores = proposal[: self.keep].astype(np.float32)
        top = proposal[self.keep : 2 * self.keep].astype(np.int64)
        top_beams, top_tokens = top // vocab, top % vocab
        candidates = np.concatenate([self.sequences[top_beams], top_tokens[:, None]], axis=1)
        hits = (top_tokens[..., None] == self.eos).any(axis=-1) | (cur_len + 1 >= self.max_length)
        if self.stops is not None:  # a stop string ends a hypothesis as EOS does
            hits |= np.array(
                [not h and self.stops.hit(c) for h, c in zip(hits, candidates, strict=True)], bool
            )
        if self.scores is not None:  # [keep, generated + 1, 1 + 2 * top_n]
            new = proposal[2 * self.keep :].reshape(self.keep, 1, -1)  # each candidate's token
            candidate_scores = np.concatenate([self.scores[top_beams], new], axis=1)

        # Running beams: the best candidates that did not stop.
        open_scores = top_scores + hits.astype(np.float32) * MASK
        running = _topk(open_scores, beams)
        self.running_scores = open_scores[running]
        reorder = top_beams[running]
        self.sequences = candidates[running]
        if self.scores is not None:
            self.scores = candidate_scores[running]

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
        best = _topk(merged_scores, beams)
        if self.diagnostics:
            self._note_margin(np.sort(merged_scores)[::-1][: beams + 1])
        self.finished_scores = merged_scores[best]
        self.finished_sequences = [merged_sequences[i] for i in best]
        if self.scores is not None:
            merged = self.finished_token_scores + list(candidate_scores)
            self.finished_token_scores = [merged[i] for i in best]
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

    def result_scores(self) -> list[np.ndarray] | None:
        """With output_scores, each result's token scores [generated, 1 + 2 * top_n]."""
        if self.scores is None:
            return None
        return self.finished_token_scores[: self.params.num_return_sequences]

    def sequence_scores(self) -> list[float]:
        """Each result's beam score (transformers' sequences_scores)."""
        return [float(s) for s in self.finished_scores[: self.params.num_return_sequences]]


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best, in torch.topk's order (so exact ties break as transformers')."""
    return torch.topk(torch.from_numpy(scores), k).indices.numpy()


def propose_all(logits: torch.Tensor, beams: list) -> list:
    """logits [rows, vocab]; beams: (request, its rows) of the step's beam requests -> for each,
    its `propose` tensor, or the exception it raised (that request only fails). One log_softmax
    and one batched pass of processors cover every beam row."""
    index = np.concatenate([np.arange(rows.start, rows.stop) for _, rows in beams])
    log_probs = logits[torch.from_numpy(index).to(logits.device)].float().log_softmax(dim=-1)
    processing, failed, at = processors.Processing(), {}, 0
    for r, _ in beams:
        try:
            processing.add(at, r.search.chain, r.search.sequences)
        except Exception as e:
            failed[r.id] = e
        at += r.rows
    processing.apply(log_probs)
    proposals, at = [], 0
    for r, _ in beams:
        own, at = log_probs[at : at + r.rows], at + r.rows
        try:
            proposals.append(failed.get(r.id) or r.search.propose(own))
        except Exception as e:
            proposals.append(e)
    return proposals
