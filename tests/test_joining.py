"""A request joining a busy engine: short inputs encoded on the loop within a step's time, the
first step in a decoder run of its own, and arrivals served while a long decoder run computes."""

import threading
import time
from types import SimpleNamespace

import numpy as np
from test_batching import decode_step

from ledserve.engine.encoder import EncoderWorker
from ledserve.engine.engine import Engine


def _batch(*lengths):
    return [SimpleNamespace(input_ids=np.zeros(n, np.int64)) for n in lengths]


def test_a_batch_known_to_be_quick_is_encoded_on_the_callers_thread():
    threads, wake = {}, threading.Event()

    def encode(batch):
        threads[id(batch)] = threading.current_thread().name

    worker = EncoderWorker(encode, wake)
    known, also_known, unknown, costly = _batch(20, 30), _batch(100), _batch(700), _batch(3000)
    worker.times.record(_batch(64), 0.004)  # 64 padded tokens: the class of 2 x 30
    worker.times.record(_batch(128), 0.004)  # 100 rounds up to 128
    worker.times.record(_batch(4096), 1.0)  # 3000 rounds up to 4096
    done = worker.dispatch([known, also_known, unknown, costly], budget=0.006)
    # the first fits the budget, the second would exceed what is left, the others go too
    assert [batch for batch, error in done] == [known] and done[0][1] is None
    assert threads[id(known)] == threading.current_thread().name
    deadline = time.monotonic() + 30
    while len(worker.in_flight) > 0 and time.monotonic() < deadline:
        worker.collect()
        time.sleep(0.01)
    assert {threads[id(b)] for b in (also_known, unknown, costly)} == {"ledserve-encoder"}
    assert worker.times.expect(_batch(700)) < 1.0  # measured on the thread, kept for next time
    assert worker.dispatch([], budget=1.0) == []
    worker.stop()


def test_an_error_while_encoding_on_the_loop_ends_that_batch_only():
    def encode(batch):
        raise RuntimeError("out of memory")

    worker = EncoderWorker(encode, threading.Event())
    batch = _batch(10)
    worker.times.record(batch, 0.0)
    ((same, error),) = worker.dispatch([batch], budget=1.0)
    assert same is batch and isinstance(error, RuntimeError)


def _alone(exported, ids, **params):
    return Engine.from_artifacts(exported["fp32"], device="cpu").generate([ids], **params)


def test_a_joining_request_takes_its_first_step_apart(exported, checkpoint, rng):
    """Beside a running beam request, a joining request's first token comes from a decoder run
    of its own before the batch's run; tokens equal each request's alone, and a request done
    after that first step never enters the batch."""
    _, model = checkpoint
    vocab = model.config.vocab_size
    long_ids, short_ids = list(rng.integers(5, vocab, 70)), list(rng.integers(5, vocab, 9))
    long = dict(num_beams=4, max_new_tokens=30, min_new_tokens=30)
    short = dict(max_new_tokens=6, do_sample=True, top_k=30, seed=5)
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    running = engine.submit(long_ids, **long)
    decode_step(engine)
    joining = engine.submit(short_ids, **short)
    once = engine.submit(short_ids, max_new_tokens=1)
    while joining not in engine._batch.requests:  # one encoder batch: they join together
        calls = engine.decoder_calls
        decode_step(engine)
    assert engine.decoder_calls - calls == 2  # the joiners' run, then the batch's
    assert once.state.name == "FINISHED" and once not in engine._batch.requests
    assert [r.id for r in engine._batch.requests] == [running.id, joining.id]
    finals = engine.run_until_done([running, joining, once])
    assert finals[0].results == _alone(exported, long_ids, **long)
    assert finals[1].results == _alone(exported, short_ids, **short)
    assert finals[2].results == _alone(exported, short_ids, max_new_tokens=1)


def test_no_run_apart_where_it_costs_more_than_half_a_step(exported, checkpoint, rng):
    """Where the last run apart cost more than half a step (a light batch), a joining request
    enters the batch's run at once: one decoder run in its join step; tokens as alone."""
    _, model = checkpoint
    vocab = model.config.vocab_size
    long_ids, short_ids = list(rng.integers(5, vocab, 70)), list(rng.integers(5, vocab, 9))
    long = dict(num_beams=4, max_new_tokens=30, min_new_tokens=30)
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    running = engine.submit(long_ids, **long)
    decode_step(engine)
    engine._apart_seconds = 1e9  # as measured on a batch where a run of 1 row costs a step
    joining = engine.submit(short_ids, max_new_tokens=5, min_new_tokens=5)
    while joining not in engine._batch.requests:
        calls = engine.decoder_calls
        decode_step(engine)
    assert engine.decoder_calls - calls == 1
    finals = engine.run_until_done([running, joining])
    assert finals[0].results == _alone(exported, long_ids, **long)
    assert finals[1].results == _alone(exported, short_ids, max_new_tokens=5, min_new_tokens=5)


def test_an_arrival_gets_its_first_token_while_a_long_run_computes(
    exported, checkpoint, rng, monkeypatch
):
    """With the loop thread inside a long decoder run (held here until released), a short
    request submitted meanwhile is admitted, encoded and takes its first step beside it; a
    request of a client at its row share stays waiting."""
    _, model = checkpoint
    vocab = model.config.vocab_size
    long_ids, short_ids = list(rng.integers(5, vocab, 70)), list(rng.integers(5, vocab, 9))
    long = dict(num_beams=4, max_new_tokens=20, min_new_tokens=20)
    engine = Engine.from_artifacts(exported["fp32"], device="cpu", max_client_rows=4)
    hold, inside, decode = threading.Event(), threading.Event(), engine.runtime.decode
    hold.set()

    def long_runs(tokens, cache, *args, **kwargs):
        if cache.rows >= 4:  # a run with the beam request's rows: a long step
            time.sleep(0.05)
            inside.set()
            assert hold.wait(timeout=120)
        return decode(tokens, cache, *args, **kwargs)

    monkeypatch.setattr(engine.runtime, "decode", long_runs)
    engine.start()
    try:
        running = engine.submit(long_ids, client="alice", **long)
        deadline = time.monotonic() + 60
        while not (engine._batch and running in engine._batch.requests):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        steps = engine.steps
        while engine.steps < steps + 1:  # a step of the beam request's (so, long) is measured
            time.sleep(0.01)
        warm = engine.submit(short_ids, client="bob", max_new_tokens=3)  # measures a run apart
        engine.run_until_done([warm])
        hold.clear()
        inside.clear()
        assert inside.wait(timeout=60)  # the loop is in a run of the beam request's rows
        over_share = engine.submit(short_ids, client="alice", max_new_tokens=3)
        arrival = engine.submit(short_ids, client="bob", max_new_tokens=4, min_new_tokens=4)
        first = arrival.events.get(timeout=60)
        assert first.tokens and not hold.is_set()  # while the long run is still held
        assert over_share in engine.waiting  # alice holds her 4 rows
        hold.set()
        finals = engine.run_until_done([running, arrival, over_share])
    finally:
        hold.set()
        engine.stop()
    assert finals[0].results == _alone(exported, long_ids, **long)
    want = _alone(exported, short_ids, max_new_tokens=4, min_new_tokens=4)
    assert [first.tokens[0]] == want[0][1:2] and finals[1].results == want
    assert finals[2].results == _alone(exported, short_ids, max_new_tokens=3)
