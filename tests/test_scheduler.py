"""Admission and the cross-attention cache, with no model: budgets counted as the decoder reads
them, encoder batches by length, slots reused without moving the other requests' K/V."""

import itertools

import numpy as np
import pytest
import torch

from ledserve.engine.cross_cache import CrossCache
from ledserve.engine.errors import CapacityExceeded, Failure
from ledserve.engine.request import State
from ledserve.engine.scheduler import Scheduler, by_length

ids = itertools.count()


class Fake:
    """What the scheduler and the cross cache read of a request."""

    def __init__(self, length, rows=1, client=None, layers=2, heads=2, dim=3):
        self.id, self.rows, self.cancelled, self.client = next(ids), rows, False, client
        self.input_ids = np.zeros(length, np.int64)
        # per layer key, value: [1, heads, length, dim], distinct values per request
        shape = (1, heads, length, dim)
        self.cross = [torch.full(shape, float(self.id)) for _ in range(2 * layers)]
        self.value = float(self.id)

        self.failed, self.state, self.search, self.ended = None, State.WAITING, Done(), None

    def mark(self, _):
        pass

    def end(self, failure, error):
        self.state, self.ended = State.FINISHED, (failure, error)

    def finish(self):
        self.state, self.ended = State.FINISHED, "finished"


class Done:
    done = False


def test_admission_counts_cross_tokens_padded_to_the_longest():
    scheduler = Scheduler(max_rows=8, max_queue=10, max_encoder_tokens=1000,
                          max_encoder_batch_tokens=10_000)  # fmt: skip
    running = [Fake(100)]
    for n in (400, 100, 100):
        scheduler.submit(Fake(n))
    # 2 x 400 fits; a third request would make 3 x 400 = 1200 > 1000 padded tokens
    batches = scheduler.admit(running)
    assert [[r.input_ids.size for r in b] for b in batches] == [[400]]
    assert len(scheduler.waiting) == 2
    assert scheduler.admit(running + batches[0]) == []


def test_admission_rows_queue_and_a_long_input_alone():
    scheduler = Scheduler(max_rows=4, max_queue=2, max_encoder_tokens=100,
                          max_encoder_batch_tokens=10_000)  # fmt: skip
    scheduler.submit(Fake(500))  # longer than the budget: runs, but only alone
    scheduler.submit(Fake(10, rows=4))
    with pytest.raises(CapacityExceeded, match="queue is full"):
        scheduler.submit(Fake(10))
    assert scheduler.admit([Fake(10)]) == []  # not alone
    (first,) = scheduler.admit([])
    assert first[0].input_ids.size == 500 and len(scheduler.waiting) == 1
    assert scheduler.admit([Fake(10, rows=1)]) == []  # 1 + 4 rows > 4


def test_a_request_goes_waiting_encoding_decoding_finished():
    scheduler = Scheduler(max_rows=8, max_queue=10, max_encoder_tokens=1000,
                          max_encoder_batch_tokens=10_000)  # fmt: skip
    a, b, c, d = Fake(10), Fake(11), Fake(12), Fake(13)
    for r in (a, b, c, d):
        scheduler.submit(r)
    d.cancelled = True  # while waiting
    plan = scheduler.schedule([], [])
    assert plan.encode == [[a, b, c]] and plan.decode == []
    assert [r.state for r in (a, b, c)] == [State.ENCODING] * 3
    assert d.state is State.FINISHED and d.ended == (Failure.CANCELLED, "cancelled")
    plan = scheduler.schedule([], [([a, b], None), ([c], MemoryError("out of memory"))])
    assert plan.encode == [] and plan.decode == [a, b]
    assert a.state is State.DECODING and c.ended[0] is Failure.OUT_OF_MEMORY
    assert "encoder failed: MemoryError" in c.ended[1]
    a.search = Done()
    a.search.done = True
    b.failed = (Failure.ERROR, "a bug")
    assert scheduler.update(plan) == [a, b] and scheduler.running == []
    assert a.ended == "finished" and b.ended == (Failure.ERROR, "a bug")


def test_admission_is_fair_across_clients():
    """The client holding the fewest rows goes first; a client at its row cap waits without
    holding up the others; without clients, first come first served."""
    scheduler = Scheduler(max_rows=16, max_queue=20, max_encoder_tokens=10_000,
                          max_encoder_batch_tokens=10_000, max_client_rows=8)  # fmt: skip
    greedy = [Fake(10, rows=4, client="greedy") for _ in range(4)]
    for r in greedy:
        scheduler.submit(r)
    (batch,) = scheduler.admit([])
    assert batch == greedy[:2]  # 8 rows: greedy's cap; 8 rows stay free
    small = Fake(10, client="small")
    scheduler.submit(small)
    (batch,) = scheduler.admit(greedy[:2])
    assert batch == [small]  # admitted ahead of greedy's waiting requests
    late, other = Fake(10, rows=4, client="late"), Fake(10, client="small")
    scheduler.submit(late)
    scheduler.submit(other)
    # greedy 8 rows, small 1: late (0 rows held) comes before small's second request
    (batch,) = scheduler.admit([*greedy[:2], small])
    assert batch == [late, other]
    assert list(scheduler.waiting) == greedy[2:]


def test_encoder_batches_group_similar_lengths_within_the_token_limit():
    requests = [Fake(n) for n in (100, 30, 110, 120, 32, 600)]
    batches = by_length(requests, max_tokens=300)
    assert [[r.input_ids.size for r in b] for b in batches] == [[30, 32], [100, 110], [120], [600]]


def _held(cache):
    """slot -> (owner, the value its K/V hold, mask length)."""
    return {
        s: (owner, float(cache.tensors[0][s, 0, 0, 0]), int(cache.mask[s].sum()))
        for s, owner in enumerate(cache.owners)
        if owner is not None
    }


def test_cross_cache_reuses_free_slots_and_compacts():
    cache = CrossCache(torch.device("cpu"), max_tokens=10_000)
    a = Fake(5)
    own = a.cross[0].data_ptr()
    assert cache.update([a]) == [0] and cache.tensors[0].data_ptr() == own  # lent, not copied
    b, c, d = Fake(7), Fake(3), Fake(6)
    assert cache.update([a, b, c, d]) == [0, 1, 2, 3]  # grown to 6 x 7, a moved once
    assert a.cross is None and b.cross is None  # the cache holds the only copy
    assert _held(cache) == {0: (a.id, a.value, 5), 1: (b.id, b.value, 7), 2: (c.id, c.value, 3),
                            3: (d.id, d.value, 6)}  # fmt: skip
    assert float(cache.tensors[1][2, 0, 3:].abs().sum()) == 0  # c's padding is zero
    pointer = cache.tensors[0].data_ptr()
    assert cache.update([a, b, d]) == [0, 1, 3]  # c leaves: nothing moves
    assert cache.owners[2] is None and int(cache.mask[2].sum()) == 0
    e = Fake(4)
    assert cache.update([a, b, d, e]) == [0, 1, 3, 2]  # e takes c's slot
    assert cache.tensors[0].data_ptr() == pointer
    assert float(cache.tensors[1][2, 0, 4:].abs().sum()) == 0  # c's stale K/V zeroed
    mask, bound = cache.bound()
    assert mask.shape == (4, 7) and bound[0].shape[0] == 4
    assert cache.update([b, d, e]) == [1, 3, 2] and cache.bound()[0].shape[0] == 4
    assert cache.update([e]) == [0]  # 1 of 6 slots in use: compacted to 2 x 4
    assert cache.mask.shape == (2, 4) and cache.bound()[0].shape == (1, 4)
    assert _held(cache) == {0: (e.id, e.value, 4)}


def test_cross_cache_trailing_free_slots_are_not_bound_and_the_budget_compacts():
    cache = CrossCache(torch.device("cpu"), max_tokens=20)
    a, b, c = Fake(5), Fake(5), Fake(5)
    cache.update([a, b, c])
    cache.update([a, b])  # 2 of 4 slots (the budget's 20 tokens): kept, the others not bound
    assert cache.slots == 4 and cache.bound()[0].shape[0] == 2
    d = Fake(9)  # a longer input: regrown to 3 x 9 = 27 > 20, the budget (admission let it in)
    cache.update([a, b, d])
    assert cache.mask.shape == (3, 9)
    cache.update([d, Fake(8)])  # 2 x 9 = 18 needed; 3 x 9 held is over the budget: compacted
    assert cache.mask.shape == (2, 9)


def test_cross_cache_joins_one_by_one_copy_the_held_requests_a_few_times():
    cache, held, moves = CrossCache(torch.device("cpu"), max_tokens=10_000), [], 0
    pointer = None
    for _ in range(32):
        held.append(Fake(6))
        cache.update(held)
        moves += cache.tensors[0].data_ptr() != pointer
        pointer = cache.tensors[0].data_ptr()
    # 1 (lent), 3, 6, 11, 18, 29, 45 slots: every request kept its K/V through each move
    assert moves == 7 and cache.slots == 45
    assert _held(cache) == {s: (r.id, r.value, 6) for s, r in enumerate(held)}
    mask, bound = cache.bound()
    assert mask.shape == (32, 6) and bound[0].shape == (32, 2, 6, 3)
    assert torch.isfinite(torch.stack([t[:32] for t in bound])).all()


def test_cross_cache_longer_input_zeroes_the_held_requests_new_positions():
    cache = CrossCache(torch.device("cpu"), max_tokens=10_000)
    a, b = Fake(4), Fake(4)
    cache.update([a, b])
    for t in cache.tensors:  # stale values where the longer slots will be
        t.fill_(float("nan"))
        t[:2, :, :4] = 1.0
    c = Fake(9)
    cache.update([a, b, c])  # reallocated to length 9: a's and b's positions 4..8 are new
    assert cache.mask.shape[1] == 9
    assert all(float(t[:2, :, 4:].abs().sum()) == 0 for t in cache.tensors)
    assert all(torch.isfinite(t[:3]).all() for t in cache.tensors)
