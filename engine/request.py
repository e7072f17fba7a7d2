"""One generation request: its inputs, parameters, search state, caches and output events."""

import itertools
import queue
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.beam import BeamSearch
from engine.kv_cache import KVCache
from engine.params import GenerationParams
from engine.search import Search, TokenSearch

_ids = itertools.count()


@dataclass
class Event:
    """What a request emits: new tokens on which the result can no longer change, then the end."""

    request_id: int
    tokens: list[int]  # newly decided tokens (of the first returned sequence)
    finished: bool = False
    results: list[list[int]] | None = None  # on the final event: every returned sequence
    error: str | None = None


@dataclass
class Request:
    input_ids: np.ndarray  # [seq] int64
    global_attention_mask: np.ndarray  # [seq] int64
    params: GenerationParams
    id: int = field(default_factory=lambda: next(_ids))
    search: Search = None
    cache: KVCache | None = None  # [rows] self-attention cache of the search's rows
    cross: list[torch.Tensor] | None = None  # per layer key, value: [1, heads, seq, head_dim]
    cancelled: bool = False
    failed: str | None = None  # why the engine stopped it, if it failed
    emitted: int = 0  # tokens already streamed (start token excluded)
    events: queue.Queue = field(default_factory=queue.Queue)

    def __post_init__(self):
        beams = self.params.num_beams > 1
        self.search = BeamSearch(self.params) if beams else TokenSearch(self.params)

    @property
    def rows(self) -> int:
        return self.search.rows

    def settled_prefix(self) -> list[int]:
        """Tokens (after the start token) that every possible result begins with."""
        search = self.search
        if isinstance(search, BeamSearch):
            candidates = [list(s) for s in search.sequences]
            candidates += [
                s
                for s, done in zip(search.finished_sequences, search.is_finished, strict=True)
                if done
            ]
        else:
            candidates = [search.results()[0]]
        prefix = candidates[0]
        for other in candidates[1:]:
            n = 0
            while n < min(len(prefix), len(other)) and prefix[n] == other[n]:
                n += 1
            prefix = prefix[:n]
        return [int(t) for t in prefix[1:]]

    def emit_progress(self):
        prefix = self.settled_prefix()
        if len(prefix) > self.emitted:
            self.events.put(Event(self.id, prefix[self.emitted :]))
            self.emitted = len(prefix)

    def finish(self):
        results = self.search.results()
        tail = results[0][1 + self.emitted :]
        self.events.put(Event(self.id, [int(t) for t in tail], finished=True, results=results))
