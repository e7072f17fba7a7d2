"""Events from the engine's thread to the server's event loop.

The engine's step hands each of its requests an event (`Request.events.put`); the gRPC handlers
await them on the event loop. `Mailbox` carries a step's events across in one wake-up, and
`EventSink.get` merges the token events a stream has not taken yet, so that a loop busy with many
streams sends one message per stream for the steps it fell behind, not one per step.
"""

import asyncio
import threading

from ledserve.engine.request import Event


class Mailbox:
    """Engine thread -> event loop. A step hands each of its requests an event; the first `put`
    of a batch wakes the loop (a socket write, and the GIL taken back afterwards), the others
    join the batch that wake-up delivers. One wake-up per request per step cost the engine
    thread about 0.16 ms a token beside busy streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.pending: list[tuple[asyncio.Queue, object]] = []
        self.lock = threading.Lock()

    def put(self, queue: asyncio.Queue, event):
        with self.lock:
            self.pending.append((queue, event))
            if len(self.pending) > 1:  # a wake-up is on its way and takes this one too
                return
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody listens any more, nothing is kept
            with self.lock:
                self.pending.clear()

    def _deliver(self):
        with self.lock:
            delivered, self.pending = self.pending, []
        for queue, event in delivered:
            queue.put_nowait(event)


class EventSink:
    """One request's events: `put` from the engine's thread lands in an asyncio.Queue."""

    def __init__(self, mailbox: Mailbox):
        self.mailbox, self.queue = mailbox, asyncio.Queue()
        self.held: Event | None = None  # an end taken off the queue while merging

    def put(self, event: Event):
        self.mailbox.put(self.queue, event)

    async def get(self) -> Event:
        """The next event. Token events already waiting merge into one, so a stream that fell
        behind the engine (a loop busy with many streams) catches up in one chunk instead of
        paying gRPC's cost per message once for every step it missed."""
        event, self.held = self.held or await self.queue.get(), None
        while not (event.finished or event.error) and not self.queue.empty():
            following = self.queue.get_nowait()
            if following.finished or following.error:
                self.held = following
                break
            scores = None if event.scores is None else event.scores + following.scores
            event = Event(event.request_id, event.tokens + following.tokens, scores=scores)
        return event
