"""One generation request: its inputs, parameters, search state, caches and output events."""

import enum
import itertools
import queue
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ledserve.engine.beam import BeamSearch
from ledserve.engine.errors import Failure, failure_of
from ledserve.engine.kv_cache import KVCache
from ledserve.engine.params import GenerationParams
from ledserve.engine.search import Search, TokenSearch
from ledserve.engine.stops import StopStrings

_ids = itertools.count()


class State(enum.StrEnum):
    WAITING = "waiting"
    """Queued for admission."""
    ENCODING = "encoding"
    """Admitted: on the encoder thread."""
    DECODING = "decoding"
    """Its rows are in the decode batch."""
    FINISHED = "finished"
    """Its final event was sent (finished, failed or cancelled)."""


class FinishReason(enum.StrEnum):
    STOP = "stop"
    """The sequence ended with EOS."""
    LENGTH = "length"
    """max_new_tokens (or the model's decoder length) was reached."""
    STOP_SEQUENCE = "stop_sequence"
    """The decoded text contains a stop string (the text ends before it)."""


@dataclass(frozen=True)
class TokenScore:
    """A generated token's log-probability under the processed distribution, and the top_n most
    probable tokens there: (token id, log-probability), best first."""

    logprob: float
    top: list[tuple[int, float]]

    @staticmethod
    def from_rows(rows: np.ndarray) -> list["TokenScore"]:
        """A search's scores [tokens, 1 + 2 * top_n] (engine/search.py) -> a TokenScore each
        (tokens that cannot come left out of `top`)."""
        n = (rows.shape[1] - 1) // 2
        return [
            TokenScore(float(row[0]), [
                (int(i), float(v)) for v, i in zip(row[1 : 1 + n], row[1 + n :], strict=True)
                if v > float("-inf")
            ])
            for row in rows
        ]  # fmt: skip


@dataclass
class Event:
    """What a request emits: new tokens on which the result can no longer change, then the end."""

    request_id: int
    tokens: list[int]  # newly decided tokens (of the first returned sequence)
    finished: bool = False
    results: list[list[int]] | None = None  # on the final event: every returned sequence
    error: str | None = None  # why it ended without an answer: a detail for logs, not clients
    failure: Failure | None = None  # the kind of that ending, set with `error`
    finish_reasons: list[FinishReason] | None = None  # per result
    timings: dict[str, float] | None = None  # on the final event: see Request.timings
    scores: list[TokenScore] | None = None  # with output_scores: of `tokens`
    result_scores: list[list[TokenScore]] | None = None  # on the final event: per result
    sequence_scores: list[float] | None = None  # on the final event of beam search: per result


@dataclass(eq=False)  # an entity: equal only to itself (its fields hold arrays)
class Request:
    input_ids: np.ndarray  # [seq] int64
    global_attention_mask: np.ndarray  # [seq] int64
    params: GenerationParams
    id: int = field(default_factory=lambda: next(_ids))
    state: State = State.WAITING
    client: str | None = None  # who sent it (the server's client identity), for fair admission
    search: Search = None
    cache: KVCache | None = None  # [rows] self-attention cache of the search's rows
    cross: list[torch.Tensor] | None = None  # per layer key, value: [1, heads, seq, head_dim]
    cancelled: bool = False
    failed: tuple[Failure, str] | None = None  # why the engine stopped it, if it failed
    emitted: int = 0  # tokens already streamed (start token excluded)
    events: queue.Queue = field(default_factory=queue.Queue)  # anything with put(Event)
    # time.perf_counter() at submit, admission, end of encoding, first streamed token, end
    times: dict[str, float] = field(default_factory=lambda: {"submitted": time.perf_counter()})
    diagnostics: bool = False  # the search records its decision margins (tests)
    stops: StopStrings | None = None  # the request's stop strings, if any

    def __post_init__(self):
        kind = BeamSearch if self.params.num_beams > 1 else TokenSearch
        self.search = kind(self.params, self.diagnostics, self.input_ids, self.stops)

    def mark(self, moment: str):
        self.times.setdefault(moment, time.perf_counter())

    def timings(self) -> dict[str, float]:
        """Seconds: queue (submit to admission), encode, first_token and total (from submit)."""
        t = self.times
        since = {k: v - t["submitted"] for k, v in t.items()}
        return {
            "queue": since.get("admitted", 0.0),
            "encode": t["encoded"] - t["admitted"] if "encoded" in t else 0.0,
            "first_token": since.get("first_token", since.get("finished", 0.0)),
            "total": since.get("finished", 0.0),
        }

    def fail(self, error: BaseException | str):
        """Stop at the next step boundary with this error (an exception is classified; a
        message is an ERROR)."""
        if isinstance(error, BaseException):
            self.failed = (failure_of(error), f"{type(error).__name__}: {error}")
        else:
            self.failed = (Failure.ERROR, error)

    def end(self, failure: Failure, error: str):
        """The final event of a request that did not finish: cancelled or failed."""
        self.state = State.FINISHED
        self.mark("finished")
        self.events.put(
            Event(self.id, [], True, error=error, failure=failure, timings=self.timings())
        )

    @property
    def rows(self) -> int:
        return self.search.rows

    def settled_prefix(self) -> list[int]:
        """Beam search: the tokens (after the start token) that every possible result begins
        with."""
        search = self.search
        candidates = [list(s) for s in search.sequences]
        candidates += [
            s for s, done in zip(search.finished_sequences, search.is_finished, strict=True) if done
        ]
        prefix = candidates[0]
        for other in candidates[1:]:
            n = 0
            while n < min(len(prefix), len(other)) and prefix[n] == other[n]:
                n += 1
            prefix = prefix[:n]
        return [int(t) for t in prefix[1:]]

    def emit_progress(self):
        search = self.search
        if isinstance(search, BeamSearch):
            new = self.settled_prefix()[self.emitted :]
        else:  # the first row's, as far as it goes: its new tokens, not the whole answer
            new = search.sequences[0, 1 + self.emitted : search.lengths()[0]].tolist()
        if new:
            self.mark("first_token")
            scores = None
            if search.wants_scores:  # the prefix is every candidate's: take the first's
                rows = search.scores[0][self.emitted : self.emitted + len(new)]
                scores = TokenScore.from_rows(rows)
            self.events.put(Event(self.id, new, scores=scores))
            self.emitted += len(new)

    def finish_reason(self, result: list[int]) -> FinishReason:
        if len(result) > 1 and result[-1] in self.params.eos_token_id:
            return FinishReason.STOP
        if self.stops is not None and self.stops.contained(result):
            return FinishReason.STOP_SEQUENCE
        return FinishReason.LENGTH

    def finish(self):
        search = self.search
        results = search.results()
        tail = [int(t) for t in results[0][1 + self.emitted :]]
        if tail:
            self.mark("first_token")
        self.state = State.FINISHED
        self.mark("finished")
        event = Event(self.id, tail, True, results, timings=self.timings(),
                      finish_reasons=[self.finish_reason(r) for r in results])  # fmt: skip
        if search.wants_scores:
            event.result_scores = [TokenScore.from_rows(s) for s in search.result_scores()]
            event.scores = event.result_scores[0][self.emitted :]
        if isinstance(search, BeamSearch):
            event.sequence_scores = search.sequence_scores()
        self.events.put(event)
