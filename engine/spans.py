"""Answer spans from start/end logits, with the semantics of transformers' question-answering
pipeline (`select_starts_ends`, `decode_spans` and its postprocess): per window a softmax over the
tokens that may hold an answer, span scores start x end for spans of at most `max_answer_len`
tokens, the best spans aligned to whole words, equal answers of different windows summed, and
the no-answer score (CLS's start x end, its minimum over windows).

The pipeline scores every (start, end) pair of a window, a [L, L] matrix (64 MB at 4,096 tokens)
of which only an [L, max_answer_len] band can be non-zero; here only that band is built. Spans of
score 0 (probability underflow) are never answers here; the pipeline may return them when a
window has fewer positive spans than it looks at.
"""

from dataclasses import dataclass

import numpy as np

MASKED_LOGIT = -10000.0  # what the pipeline puts on tokens that cannot be in an answer


@dataclass
class Window:
    """One model input cut from a (question, context) pair by the tokenizer."""

    input_ids: np.ndarray  # [length] int64
    candidate: np.ndarray  # [length] bool: a context token (or CLS), which may be in an answer
    encoding: object  # the tokenizers.Encoding: token -> word -> characters of the context


def probabilities(logits: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """[length] float32 logits -> the pipeline's softmax over candidate tokens (float32, the
    others exactly 0)."""
    x = np.where(candidate, logits.astype(np.float32), np.float32(MASKED_LOGIT))
    x = np.exp(x - x.max())
    return x / x.sum()


def best_spans(start: np.ndarray, end: np.ndarray, count: int, max_answer_len: int):
    """The `count` highest-scoring spans (start <= end < start + max_answer_len) of positive
    score -> (starts, ends, scores), best first; equal scores in (start, end) order."""
    length = len(start)
    width = min(max_answer_len, length)
    band = np.zeros((length, width), np.float32)  # band[s, d]: the span s .. s + d
    for d in range(width):
        band[: length - d, d] = start[: length - d] * end[d:]
    flat = band.ravel()
    positive = np.flatnonzero(flat > 0)
    if len(positive) > count:
        kept = np.argpartition(-flat[positive], count - 1)[:count]
        positive = np.sort(positive[kept])  # back in (start, end) order for the stable sort
    order = positive[np.argsort(-flat[positive], kind="stable")]
    starts, offsets = np.divmod(order, width)
    return starts, starts + offsets, flat[order]


def char_span(encoding, s: int, e: int) -> tuple[int, int]:
    """Token span -> character span in the context, widened to whole words where the tokenizer
    knows words (the pipeline's `align_to_words`)."""
    try:
        start = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
        end = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
    except Exception:  # the pipeline's fallback too: tokenizers without words
        start, end = encoding.offsets[s][0], encoding.offsets[e][1]
    return start, end


def context_answers(context: str, windows: list[Window], logits, top_k: int,
                    max_answer_len: int) -> tuple[list[dict], float]:  # fmt: skip
    """One context's answers (score, start, end, answer), best first, equal texts of different
    windows merged with their scores summed, and its no-answer score; `logits` holds each
    window's (start, end) logits."""
    found: list[dict] = []
    null_score = 1000000.0  # the pipeline's "large and positive" start
    looked_at = top_k * 2 + 10  # the pipeline's candidates per window (some merge or vanish)
    for window, (start_logits, end_logits) in zip(windows, logits, strict=True):
        start = probabilities(start_logits, window.candidate)
        end = probabilities(end_logits, window.candidate)
        null_score = min(null_score, float(start[0] * end[0]))
        start[0] = end[0] = 0.0  # CLS is the null answer, never part of a span
        for s, e, score in zip(*best_spans(start, end, looked_at, max_answer_len), strict=True):
            first, last = char_span(window.encoding, int(s), int(e))
            text = context[first:last]
            same = next((a for a in found if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += float(score)
            else:
                found.append({"score": float(score), "start": first, "end": last, "answer": text})
    return sorted(found, key=lambda a: a["score"], reverse=True), null_score


def ranked(found: list[dict], null_score: float, top_k: int, handle_impossible_answer: bool):
    """The pipeline's result: the no-answer ("", 0, 0) among the answers if asked, the best
    `top_k`; one answer as a dict, else a list."""
    if handle_impossible_answer:
        found = [*found, {"score": null_score, "start": 0, "end": 0, "answer": ""}]
    found = sorted(found, key=lambda a: a["score"], reverse=True)[:top_k]
    return found[0] if len(found) == 1 else found
