"""Score transforms with transformers' arithmetic, each batched over rows with per-row values.

`Kind.batch(scores, members)` transforms, in place, the rows of `scores` [rows, vocab] named by
members [(row, processor, tokens so far)], each row with its processor's values as float32 (the
dtype transformers' processors compute in), so every row gets, to the bit, what the transformers
processor computes for it alone. Penalties, the EOS length penalty, temperature, top-k, top-p,
min-p, typical, epsilon and eta sampling, and the final log-softmax.
"""

from collections import defaultdict

import numpy as np
import torch

NEG_INF = float("-inf")


def divide(scores: torch.Tensor, by) -> torch.Tensor:
    """scores / by, computed as torch computes a division by a Python float: CUDA multiplies by
    the float32 reciprocal of a scalar, the CPU divides."""
    if isinstance(by, torch.Tensor) and scores.is_cuda:
        return scores * by.reciprocal()
    return scores / by


def penalize(scores: torch.Tensor, ids: torch.Tensor, penalty) -> torch.Tensor:
    """transformers' repetition penalty. ids [rows, length] int64: each row's tokens so far (a
    row shorter than the others is padded by repeating one of its own tokens)."""
    picked = torch.gather(scores, 1, ids)
    picked = torch.where(picked < 0, picked * penalty, divide(picked, penalty))
    return scores.scatter(1, ids, picked)


def top_k(scores: torch.Tensor, k) -> torch.Tensor:
    """Keep each row's k best (ties with the k-th included); k an int, or [rows] int64."""
    if isinstance(k, int):
        kth = torch.topk(scores, min(k, scores.shape[-1]))[0][..., -1, None]
    else:
        k = k.clamp(max=scores.shape[-1])
        kth = torch.topk(scores, int(k.max()))[0].gather(1, k[:, None] - 1)
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p(scores: torch.Tensor, threshold, keep: int) -> torch.Tensor:
    """Keep each row's smallest set of best tokens whose probability reaches top_p (at least
    `keep`); threshold: 1 - top_p (a float, or each row's as float32 [rows, 1])."""
    ordered, order = torch.sort(scores, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= threshold
    remove[..., -keep:] = False
    return scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def min_p(scores: torch.Tensor, min_p, keep: int) -> torch.Tensor:
    probs = torch.softmax(scores, dim=-1)
    remove = probs < min_p * probs.max(dim=-1, keepdim=True)[0]
    order = torch.argsort(scores, descending=True, dim=-1)
    ordered = torch.gather(remove, -1, order)
    ordered[..., :keep] = False
    return scores.masked_fill(ordered.scatter(1, order, ordered), NEG_INF)


def typical(scores: torch.Tensor, mass, keep: int) -> torch.Tensor:
    normalized = torch.nn.functional.log_softmax(scores, dim=-1)
    entropy = -(normalized * torch.exp(normalized)).nansum(-1, keepdim=True)
    shifted, order = torch.sort(torch.abs(-normalized - entropy), descending=False)
    cumulative = scores.gather(-1, order).softmax(dim=-1).cumsum(dim=-1)
    last = (cumulative < mass).sum(dim=1).clamp_(max=shifted.shape[-1] - 1)
    remove = shifted > shifted.gather(1, last.view(-1, 1))
    remove[..., :keep] = False
    return scores.masked_fill(remove.scatter(1, order, remove), NEG_INF)


def cutoff(scores: torch.Tensor, below, keep: int) -> torch.Tensor:
    """Drop tokens whose probability is below `below` ([rows, 1]), keeping the `keep` best."""
    remove = scores.softmax(dim=-1) < below
    kth = torch.topk(scores, min(keep, scores.shape[-1]))[0][..., -1, None]
    return scores.masked_fill(remove & (scores < kth), NEG_INF)


def eta_threshold(scores: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    """eta sampling's per-row threshold [rows, 1]; epsilon [rows] float32."""
    entropy = torch.distributions.Categorical(logits=scores).entropy()
    return torch.min(epsilon, torch.sqrt(epsilon) * torch.exp(-entropy))[..., None]


# -- the processors ------------------------------------------------------------------------


class Transform:
    """A score transform; `batch` applies many rows' instances at once."""

    keep = 1  # min_tokens_to_keep, where a kind has one

    def __call__(self, ids, scores):
        scores = scores.clone()
        members = [(row, self, tokens) for row, tokens in enumerate(ids.cpu().numpy())]
        type(self).batch(scores, members)
        return scores

    @classmethod
    def batch(cls, scores: torch.Tensor, members: list):
        for keep, group in _groups(members, lambda p: p.keep).items():
            rows = _rows(scores, group)
            scores[rows] = cls.transform(scores[rows], group, keep)

    @classmethod
    def transform(cls, scores: torch.Tensor, members: list, keep: int) -> torch.Tensor:
        """scores [n, vocab] of the members' rows -> the transformed scores."""
        raise NotImplementedError


def _groups(members: list, key) -> dict:
    groups = defaultdict(list)
    for member in members:
        groups[key(member[1])].append(member)
    return groups


def _rows(scores: torch.Tensor, members: list) -> torch.Tensor:
    return torch.tensor([row for row, _, _ in members], device=scores.device)


def _values(scores: torch.Tensor, members: list, name: str) -> torch.Tensor:
    """Each member's processor's `name` as float32 [n, 1] (a Python float as torch uses it)."""
    values = np.array([getattr(p, name) for _, p, _ in members], dtype=np.float32)
    return torch.from_numpy(values).to(scores.device)[:, None]


class RepetitionPenalty(Transform):
    def __init__(self, penalty: float):
        self.penalty = penalty

    @classmethod
    def transform(cls, scores, members, keep):
        width = max(len(tokens) for _, _, tokens in members)
        ids = [list(t) + [t[0]] * (width - len(t)) for _, _, t in members]  # [n, width]
        ids = torch.tensor(ids, dtype=torch.int64, device=scores.device)
        return penalize(scores, ids, _values(scores, members, "penalty"))


class EncoderRepetitionPenalty(Transform):
    """The input's tokens (`source`) penalised inversely to repetition_penalty."""

    def __init__(self, penalty: float, source: np.ndarray):
        self.inverse = 1 / penalty  # as transformers stores it
        self.ids = np.unique(source)  # the scatter of a repeated id writes the same value
        self._ids: torch.Tensor | None = None  # [1, distinct ids] on the scores' device

    @classmethod
    def batch(cls, scores, members):
        for processor, group in _groups(members, lambda p: p).items():
            if processor._ids is None or processor._ids.device != scores.device:
                processor._ids = torch.as_tensor(processor.ids, device=scores.device)[None]
            rows = _rows(scores, group)
            ids = processor._ids.expand(len(group), -1)
            scores[rows] = penalize(scores[rows], ids, processor.inverse)


class ExponentialDecay(Transform):
    """EOS scores grow by |score| * (factor ** (length - start) - 1) once the decoder length
    (start token included) passes `start`. A -inf EOS (banned) stays -inf where transformers'
    arithmetic makes it NaN (-inf + inf)."""

    def __init__(self, start: int, factor: float, eos: tuple[int, ...]):
        self.start, self.factor, self.eos = start, factor, tuple(eos)

    @classmethod
    def batch(cls, scores, members):
        members = [m for m in members if len(m[2]) > m[1].start]
        for eos, group in _groups(members, lambda p: p.eos).items():
            rows = _rows(scores, group)[:, None]
            columns = torch.tensor(eos, device=scores.device)[None]
            growth = [p.factor ** (len(tokens) - p.start) - 1 for _, p, tokens in group]
            growth = torch.tensor(np.array(growth, np.float32), device=scores.device)[:, None]
            old = scores[rows, columns]  # [n, eos]
            scores[rows, columns] = torch.where(old.isfinite(), old + old.abs() * growth, old)


class Temperature(Transform):
    def __init__(self, temperature: float):
        self.temperature = temperature

    @classmethod
    def transform(cls, scores, members, keep):
        return divide(scores, _values(scores, members, "temperature"))


class TopK(Transform):
    def __init__(self, k: int, keep: int = 1):
        self.k = max(k, keep)

    @classmethod
    def transform(cls, scores, members, keep):
        k = torch.tensor([p.k for _, p, _ in members], device=scores.device)
        return top_k(scores, k)


class TopP(Transform):
    def __init__(self, top_p: float, keep: int = 1):
        self.top_p, self.keep = top_p, keep
        self.threshold = 1 - top_p  # in double, then float32: what transformers compares with

    @classmethod
    def transform(cls, scores, members, keep):
        return top_p(scores, _values(scores, members, "threshold"), keep)


class MinP(Transform):
    def __init__(self, min_p: float, keep: int = 1):
        self.min_p, self.keep = min_p, keep

    @classmethod
    def transform(cls, scores, members, keep):
        return min_p(scores, _values(scores, members, "min_p"), keep)


class Typical(Transform):
    def __init__(self, mass: float, keep: int = 1):
        self.mass, self.keep = mass, keep

    @classmethod
    def transform(cls, scores, members, keep):
        return typical(scores, _values(scores, members, "mass"), keep)


class EpsilonCutoff(Transform):
    def __init__(self, epsilon: float, keep: int = 1):
        self.epsilon, self.keep = epsilon, keep

    @classmethod
    def transform(cls, scores, members, keep):
        return cutoff(scores, _values(scores, members, "epsilon"), keep)


class EtaCutoff(Transform):
    def __init__(self, epsilon: float, keep: int = 1):
        self.epsilon, self.keep = epsilon, keep

    @classmethod
    def transform(cls, scores, members, keep):
        return cutoff(
            scores, eta_threshold(scores, _values(scores, members, "epsilon")[:, 0]), keep
        )


class Renormalize(Transform):
    """transformers' LogitNormalization: a log-softmax after every other processor."""

    @classmethod
    def transform(cls, scores, members, keep):
        return scores.log_softmax(dim=-1)


def sampling(params) -> list:
    """The sampling warpers transformers adds for these parameters, in its order."""
    keep = max(2, 1 + len(params.eos_token_id)) if params.num_beams > 1 else 1
    chain = []
    if params.temperature != 1.0:
        chain.append(Temperature(params.temperature))
    if params.top_k:
        chain.append(TopK(params.top_k, keep))
    if params.top_p < 1.0:
        chain.append(TopP(params.top_p, keep))
    if params.min_p is not None:
        chain.append(MinP(params.min_p, keep))
    if params.typical_p < 1.0:
        chain.append(Typical(params.typical_p, keep))
    if 0.0 < params.epsilon_cutoff < 1.0:
        chain.append(EpsilonCutoff(params.epsilon_cutoff, keep))
    if 0.0 < params.eta_cutoff < 1.0:
        chain.append(EtaCutoff(params.eta_cutoff, keep))
    return chain
