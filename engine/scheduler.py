"""The scheduler: the waiting queue, the running requests, and each step's plan.

A request goes waiting -> encoding -> decoding -> finished (`Request.state`). It waits (bounded
by `max_queue`) until the running and encoding requests leave room for its rows (`max_rows`) and
its cross K/V (`max_encoder_tokens`, counted padded as the decoder reads them: requests x the
longest input; a longer input still runs when it would be alone). Admitted requests go to the
encoder in batches of similar lengths within `max_encoder_batch_tokens` padded tokens.

Fairness across clients (`Request.client`): the next request admitted is the first waiting one
of the client that holds the fewest rows, and a client's requests never hold more than
`max_client_rows` rows (a capped client's requests wait without holding up other clients').
Otherwise first come, first served: a request that does not fit stops those behind it, so a large
request is not starved by small ones. `schedule()` gives a step its plan; `update()` ends the
requests the step finished, failed or saw cancelled.
"""

import threading
from collections import Counter, deque
from dataclasses import dataclass

from ledserve.engine.errors import CapacityExceeded, Failure, failure_of
from ledserve.engine.request import Request, State


@dataclass
class StepPlan:
    encode: list[list[Request]]
    """Requests admitted at this step, in encoder batches (for the encoder thread)."""
    decode: list[Request]
    """The requests whose rows this step's decoder run takes, in the decode batch's order (those
    already decoding, then the ones that join)."""


class Scheduler:
    def __init__(self, max_rows: int, max_queue: int, max_encoder_tokens: int,
                 max_encoder_batch_tokens: int, max_client_rows: int | None = None):  # fmt: skip
        self.max_rows, self.max_queue = max_rows, max_queue
        self.max_client_rows = max_client_rows or max_rows
        self.max_encoder_tokens = max_encoder_tokens
        self.max_encoder_batch_tokens = max_encoder_batch_tokens
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # decoding, in the decode batch's order
        self.lock = threading.Lock()  # submit (any thread) against admit (the loop)

    def submit(self, request: Request):
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise CapacityExceeded(f"queue is full ({self.max_queue} waiting requests)")
            self.waiting.append(request)

    def schedule(self, encoding: list[Request], encoded: list) -> StepPlan:
        """The next step's plan. `encoding`: requests on the encoder thread; `encoded`: its
        finished batches, (requests, error or None), whose requests join the decode batch."""
        self._retire(cancelled_only=True)
        self.join(encoded)
        return StepPlan(self.admit(self.running + encoding), list(self.running))

    def join(self, encoded: list):
        """Encoded batches, (requests, the error that ended them or None), join the decode batch's
        end (a failed batch's requests end; the engine goes on)."""
        for batch, error in encoded:
            for r in batch:
                if error is not None:
                    _end(r, failure_of(error), f"encoder failed: {type(error).__name__}: {error}")
                elif r.cancelled:
                    _end(r, Failure.CANCELLED, "cancelled")
                else:
                    r.state = State.DECODING
                    self.running.append(r)

    def update(self, plan: StepPlan) -> list[Request]:
        """After the step's decoder run: its finished, failed and cancelled requests end and
        leave the batch; returns them."""
        return self._retire()

    def drop(self, error: str) -> list[Request]:
        """A failed step (a bug): every running request ends with `error`."""
        dropped, self.running = self.running, []
        for r in dropped:
            _end(r, Failure.ERROR, error)
        return dropped

    def _retire(self, cancelled_only: bool = False) -> list[Request]:
        keep, ended = [], []
        for r in self.running:
            if r.cancelled or r.failed:
                _end(r, *(r.failed or (Failure.CANCELLED, "cancelled")))
            elif r.search.done and not cancelled_only:
                r.finish()
                r.cache = r.cross = None
            else:
                keep.append(r)
                continue
            ended.append(r)
        self.running = keep
        return ended

    def admit(self, held: list[Request]) -> list[list[Request]]:
        """The waiting requests that fit beside `held` (running or encoding), as encoder batches;
        cancelled ones end here."""
        rows, count = sum(r.rows for r in held), len(held)
        longest = max((r.input_ids.size for r in held), default=0)
        by_client = Counter()  # rows held per client
        for r in held:
            by_client[r.client] += r.rows
        admitted = []
        with self.lock:
            for r in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(r)
                _end(r, Failure.CANCELLED, "cancelled")
            while True:
                allowed = [
                    r for r in self.waiting if by_client[r.client] + r.rows <= self.max_client_rows
                ]
                if not allowed:
                    break
                request = min(allowed, key=lambda r: by_client[r.client])  # the first of ties
                fits_rows = rows + request.rows <= self.max_rows
                padded = (count + 1) * max(longest, request.input_ids.size)
                fits_tokens = padded <= self.max_encoder_tokens
                alone = not held and not admitted  # a long input still runs, by itself
                if not (fits_rows and (fits_tokens or alone)):
                    break
                self.waiting.remove(request)
                admitted.append(request)
                request.state = State.ENCODING
                request.mark("admitted")
                rows, count = rows + request.rows, count + 1
                longest = max(longest, request.input_ids.size)
                by_client[request.client] += request.rows
        return by_length(admitted, self.max_encoder_batch_tokens)


def _end(request: Request, failure: Failure, error: str):
    """A request that ends without finishing releases its caches."""
    request.end(failure, error)
    request.cache = request.cross = None


def by_length(requests: list[Request], max_tokens: int, slack: float = 1.25) -> list[list[Request]]:
    """Encoder batches of similar input lengths (longest <= slack x shortest), limiting padding,
    of at most `max_tokens` padded tokens (or one request)."""
    batches: list[list[Request]] = []
    for request in sorted(requests, key=lambda r: r.input_ids.size):
        n = request.input_ids.size
        last = batches[-1] if batches else None
        if last and n <= slack * last[0].input_ids.size and n * (len(last) + 1) <= max_tokens:
            last.append(request)
        else:
            batches.append([request])
    return batches
