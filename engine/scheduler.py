"""Admission: the queue of waiting requests and the policy that lets them into the batch.

A request waits (bounded by `max_queue`) until the running and encoding requests leave room for
its rows (`max_rows`) and its cross K/V (`max_encoder_tokens`, counted padded as the decoder reads
them: requests x the longest input; a longer input still runs when it would be alone).
Admitted requests go to the encoder in batches of similar lengths within
`max_encoder_batch_tokens` padded tokens. First come, first served: one that does not fit stops
those behind it.
"""

import threading
from collections import deque

from ledserve.engine.errors import CapacityExceeded, Failure
from ledserve.engine.request import Request


class Scheduler:
    def __init__(self, max_rows: int, max_queue: int, max_encoder_tokens: int,
                 max_encoder_batch_tokens: int):  # fmt: skip
        self.max_rows, self.max_queue = max_rows, max_queue
        self.max_encoder_tokens = max_encoder_tokens
        self.max_encoder_batch_tokens = max_encoder_batch_tokens
        self.waiting: deque[Request] = deque()
        self.lock = threading.Lock()  # submit (any thread) against admit (the loop)

    def submit(self, request: Request):
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise CapacityExceeded(f"queue is full ({self.max_queue} waiting requests)")
            self.waiting.append(request)

    def admit(self, held: list[Request]) -> list[list[Request]]:
        """The waiting requests that fit beside `held` (running or encoding), as encoder batches;
        cancelled ones end here."""
        rows, count = sum(r.rows for r in held), len(held)
        longest = max((r.input_ids.size for r in held), default=0)
        admitted = []
        with self.lock:
            while self.waiting:
                request = self.waiting[0]
                if request.cancelled:
                    self.waiting.popleft().end(Failure.CANCELLED, "cancelled")
                    continue
                fits_rows = rows + request.rows <= self.max_rows
                padded = (count + 1) * max(longest, request.input_ids.size)
                fits_tokens = padded <= self.max_encoder_tokens
                alone = not held and not admitted  # a long input still runs, by itself
                if not (fits_rows and (fits_tokens or alone)):
                    break
                admitted.append(self.waiting.popleft())
                request.mark("admitted")
                rows, count = rows + request.rows, count + 1
                longest = max(longest, request.input_ids.size)
        return by_length(admitted, self.max_encoder_batch_tokens)


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
