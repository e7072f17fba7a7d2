"""The encoder on its own thread: encoder batches run beside the decode loop, so a long input
never stops the tokens of running streams (a 16k-token input is seconds of encoder work on a CPU).

The loop hands a batch over with `submit` and picks finished batches up with `collect` at its
next step boundary; ONNX Runtime and torch release the GIL while they compute, so both threads
make progress. A failing batch comes back with its exception and ends only its own requests.
The thread ends after a second without work (and starts again with the next batch), so an engine
nobody uses any more holds no thread that keeps it, and its sessions, alive.

A batch expected to cost no more than a budget the loop gives (about one decode step) is encoded
on the loop's own thread instead (`dispatch`): a short input then joins the very step it was
admitted at, instead of waiting behind a long input on the encoder thread and for the next step
boundary. The expectation is the last run of a batch of similar padded size (`EncodeTimes`); a
size not run yet goes to the thread.
"""

import math
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

IDLE_SECONDS = 1.0


def encode_batch(runtime, pad_token_id: int, shrink_after_tokens: int | None, requests: list):
    """One encoder run over a batch (padded to its longest input): each request's cross K/V and
    empty self-attention cache. `shrink_after_tokens`: from this many padded tokens, the run's
    memory goes back to the system afterwards."""
    length = max(r.input_ids.size for r in requests)
    ids = np.full((len(requests), length), pad_token_id, np.int64)
    mask = np.zeros_like(ids)
    glob = np.zeros_like(ids)
    for row, r in enumerate(requests):
        n = r.input_ids.size
        ids[row, :n], mask[row, :n], glob[row, :n] = r.input_ids, 1, r.global_attention_mask
    shrink = shrink_after_tokens is not None and ids.size >= shrink_after_tokens
    encoded = runtime.encode(ids, mask, glob, shrink=shrink)
    for request, cross in zip(requests, encoded, strict=True):
        request.cross = cross
        request.cache = runtime.empty_cache(request.rows)
        request.mark("encoded")


class EncodeTimes:
    """Seconds the last encoder run of each size class took (padded tokens, rounded up to a power
    of two): a Longformer's cost grows with its padded input, and a short input costs at least
    one attention window, whatever its length."""

    def __init__(self):
        self.seconds: dict[int, float] = {}

    @staticmethod
    def size(batch: list) -> int:
        padded = len(batch) * max(r.input_ids.size for r in batch)
        return 1 << math.ceil(math.log2(padded))

    def record(self, batch: list, seconds: float):
        self.seconds[self.size(batch)] = seconds

    def expect(self, batch: list) -> float:
        """The expected seconds of encoding `batch`; inf for a size not run yet."""
        return self.seconds.get(self.size(batch), math.inf)


class EncoderWorker:
    def __init__(self, encode: Callable[[list], None], wake: threading.Event):
        self._encode = encode  # fills each request's cross K/V and empty self-attention cache
        self._wake = wake  # set when a batch is done, so an idle loop picks it up at once
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # a batch is never left behind by a thread that ends
        self.in_flight: list = []  # requests submitted and not yet collected (the loop's view)
        self.times = EncodeTimes()

    def dispatch(self, batches: list[list], budget: float) -> list[tuple[list, Exception | None]]:
        """Hand `batches` over: those expected to take `budget` seconds in all are encoded here,
        on the caller's thread, and returned as `collect` returns finished ones; the others go
        to the encoder thread."""
        here = []
        for batch in batches:
            expected = self.times.expect(batch)
            if expected <= budget:
                budget -= expected
                here.append((batch, self._timed(batch)))
            else:
                self.submit(batch)
        return here

    def _timed(self, batch: list) -> Exception | None:
        """Encode `batch`, recording its time; the error that ended it, if any."""
        start = time.perf_counter()
        try:
            self._encode(batch)
        except Exception as e:  # ends this batch's requests only (see Scheduler.join)
            return e
        self.times.record(batch, time.perf_counter() - start)
        return None

    def submit(self, batch: list):
        self.in_flight += batch
        with self._lock:
            self._todo.put(batch)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ledserve-encoder", daemon=True
                )
                self._thread.start()

    def collect(self) -> list[tuple[list, Exception | None]]:
        """The batches finished since the last call: (requests, the error that ended them)."""
        done = []
        while True:
            try:
                done.append(self._done.get_nowait())
            except queue.Empty:
                break
        finished = {id(r) for batch, _ in done for r in batch}
        self.in_flight = [r for r in self.in_flight if id(r) not in finished]
        return done

    def stop(self):
        with self._lock:
            thread = self._thread
            if thread is not None:
                self._todo.put(None)
        if thread is not None:
            thread.join()

    def _run(self):
        while True:
            try:
                batch = self._todo.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                batch = None  # idle: end, as after stop()
            if batch is None:  # end, unless a batch came in meanwhile (it is done first)
                with self._lock:
                    if self._todo.empty():
                        self._thread = None
                        return
                continue
            self._done.put((batch, self._timed(batch)))
            self._wake.set()
