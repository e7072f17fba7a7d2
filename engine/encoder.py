"""The encoder on its own thread: encoder batches run beside the decode loop, so a long input
never stops the tokens of running streams (a 16k-token input is seconds of encoder work on a CPU).

The loop hands a batch over with `submit` and picks finished batches up with `collect` at its
next step boundary; ONNX Runtime and torch release the GIL while they compute, so both threads
make progress. A failing batch comes back with its exception and ends only its own requests.
The thread ends after a second without work (and starts again with the next batch), so an engine
nobody uses any more holds no thread that keeps it, and its sessions, alive.
"""

import queue
import threading
from collections.abc import Callable

IDLE_SECONDS = 1.0


class EncoderWorker:
    def __init__(self, encode: Callable[[list], None], wake: threading.Event):
        self._encode = encode  # fills each request's cross K/V and empty self-attention cache
        self._wake = wake  # set when a batch is done, so an idle loop picks it up at once
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # a batch is never left behind by a thread that ends
        self.in_flight: list = []  # requests submitted and not yet collected (the loop's view)

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
            try:
                self._encode(batch)
                error = None
            except Exception as e:  # ends this batch's requests only (see Engine._collect)
                error = e
            self._done.put((batch, error))
            self._wake.set()
