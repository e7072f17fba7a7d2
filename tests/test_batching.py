"""Iteration-level batching: requests joining and leaving mid-flight, cancellation, limits,
shared cross-attention memory, sampling seeds, the loop thread, and fp16 against fp32."""

import gc
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from ledserve.engine.engine import Engine
from ledserve.engine.errors import CapacityExceeded, Failure, InvalidRequest, failure_of

MIXED = [  # rows per request 2, 1, 2, 4, 1, 1, all in one decoder run per step
    dict(max_new_tokens=12, min_new_tokens=6, num_beams=2, no_repeat_ngram_size=2),
    dict(max_new_tokens=9, min_new_tokens=6),
    dict(
        max_new_tokens=15,
        min_new_tokens=6,
        do_sample=True,
        top_k=20,
        seed=7,
        num_return_sequences=2,
    ),
    dict(max_new_tokens=10, num_beams=4, length_penalty=2.0, early_stopping=True),
    dict(max_new_tokens=7, min_new_tokens=4, repetition_penalty=1.4),
    dict(
        max_new_tokens=8,
        do_sample=True,
        temperature=0.8,
        top_p=0.85,
        top_k=0,
        seed=3,
        repetition_penalty=1.2,
    ),
]


def decode_step(engine):
    """Step until a decoder step ran (admitted requests are encoded on the encoder thread)."""
    while not engine.step():
        engine.wait()


def random_inputs(rng, vocab, count):
    rows = [list(rng.integers(5, vocab, int(rng.integers(3, 80)))) for _ in range(count)]
    return rows, [[int(i < 3) for i in range(len(r))] for r in rows]


def test_requests_joining_midflight_match_alone(exported, checkpoint, rng):
    _, model = checkpoint
    rows, globals_ = random_inputs(rng, model.config.vocab_size, len(MIXED))
    alone, solo_calls = [], 0
    for ids, glob, params in zip(rows, globals_, MIXED, strict=True):
        solo = Engine.from_artifacts(exported["fp32"], device="cpu")
        alone.append(solo.generate([ids], [glob], **params))
        solo_calls += solo.decoder_calls

    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    requests = []
    for ids, glob, params in zip(rows, globals_, MIXED, strict=True):
        requests.append(engine.submit(ids, glob, **params))
        decode_step(engine)  # the next request joins a running batch, a step or more later
    finals = engine.run_until_done(requests)
    assert [f.results for f in finals] == alone
    # The requests shared decoder runs: fewer runs than they needed one at a time.
    print(f"decoder runs together {engine.decoder_calls}, alone {solo_calls}")
    assert engine.decoder_calls < solo_calls


def test_beam_request_holds_one_copy_of_cross_attention(exported, checkpoint, rng):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = list(rng.integers(5, model.config.vocab_size, 50))
    greedy = engine.submit(ids, max_new_tokens=5, min_new_tokens=5)
    beam = engine.submit(ids, max_new_tokens=5, min_new_tokens=5, num_beams=4)
    decode_step(engine)
    batch = engine._batch
    assert batch.cache.rows == 5 and engine.decoder_calls == 1  # one run for 1 + 4 rows
    mask, cross = batch.cross.bound()
    assert mask.shape == (2, 50)  # one slot of cross K/V per request, not per beam
    assert all(c.shape[0] == 2 for c in cross)
    assert greedy.cross is None and beam.cross is None  # the batch's copy is the only one
    assert batch.request_rows.tolist() == [[0, 0, 0, 0], [1, 2, 3, 4]]
    assert batch.row_slots.tolist() == [0, 4, 5, 6, 7]


def test_cancel_frees_the_slot(exported, checkpoint, rng):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = list(rng.integers(5, model.config.vocab_size, 20))
    request = engine.submit(ids, max_new_tokens=40, num_beams=2)
    decode_step(engine)
    engine.cancel(request)
    engine.step()
    assert engine.running == []
    events = []
    while not request.events.empty():
        events.append(request.events.get())
    assert events[-1].finished and events[-1].error == "cancelled"
    assert events[-1].failure is Failure.CANCELLED


def test_limits_and_bad_inputs(exported):
    engine = Engine.from_artifacts(exported["fp32"], device="cpu", max_queue=2, max_beams=4)
    with pytest.raises(InvalidRequest, match="non-empty"):
        engine.submit([])
    limit = engine.max_input
    with pytest.raises(
        InvalidRequest, match=f"input has {limit + 1} tokens; the model's maximum is {limit}"
    ):
        engine.submit([5] * (limit + 1))
    with pytest.raises(InvalidRequest, match="num_beams must be between 1 and 4, got 5"):
        engine.submit([5, 6], num_beams=5)
    engine.submit([5, 6])
    engine.submit([5, 6])
    with pytest.raises(CapacityExceeded, match="queue is full"):
        engine.submit([5, 6])


def test_sampling_is_reproducible_with_a_seed(exported, checkpoint, rng):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = list(rng.integers(5, model.config.vocab_size, 30))
    params = dict(do_sample=True, max_new_tokens=20, top_p=0.9, temperature=1.5, seed=123)
    first = engine.generate([ids], **params)
    assert engine.generate([ids], **params) == first
    other = [engine.generate([ids], **{**params, "seed": s})[0] for s in range(5)]
    assert any(o != first[0] for o in other)  # the seed matters


def test_greedy_and_beam_steps_run_torch_on_one_thread(exported, checkpoint, rng, monkeypatch):
    """On the CPU, a step without sampling rows runs the engine's torch work on one thread
    (runtime.one_host_thread); a sampling step keeps torch's threads; either way the caller's
    count is the same afterwards. Tokens are unchanged (every parity test runs through it)."""
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    seen, run = [], engine.runtime._run

    def record(session, *args):  # the thread count where a decoder run starts
        if session is engine.runtime.decoder:
            seen.append(torch.get_num_threads())
        return run(session, *args)

    monkeypatch.setattr(engine.runtime, "_run", record)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ids = list(rng.integers(5, model.config.vocab_size, 30))
        engine.generate([ids], max_new_tokens=5, num_beams=2)
        light, seen[:] = list(seen), []
        engine.generate([ids], max_new_tokens=5, do_sample=True, top_p=0.9, seed=1)
        assert light and set(light) == {1}
        assert seen and set(seen) == {2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_loop_thread_and_streaming(exported, checkpoint, rng):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = list(rng.integers(5, model.config.vocab_size, 30))
    want = engine.generate([ids], max_new_tokens=12, num_beams=3)[0]
    streamed = [t for chunk in engine.stream(ids, max_new_tokens=12, num_beams=3) for t in chunk]
    assert [want[0], *streamed] == want
    engine.start()
    try:
        assert engine.generate([ids], max_new_tokens=12, num_beams=3)[0] == want
    finally:
        engine.stop()


def test_fp16_greedy_agrees_with_fp32(exported, checkpoint, rng):
    _, model = checkpoint
    fp32 = Engine.from_artifacts(exported["fp32"], device="cpu")
    fp16 = Engine.from_artifacts(exported["fp16"], device="cpu")
    rows, globals_ = random_inputs(rng, model.config.vocab_size, 12)
    a = fp32.generate(rows, globals_, max_new_tokens=20, no_repeat_ngram_size=3)
    b = fp16.generate(rows, globals_, max_new_tokens=20, no_repeat_ngram_size=3)
    same = sum(x == y for s, t in zip(a, b, strict=True) for x, y in zip(s, t, strict=False))
    total = sum(max(len(s), len(t)) for s, t in zip(a, b, strict=True))
    print(f"fp16 greedy tokens equal to fp32: {same}/{total}")
    assert same / total >= 0.9


def test_sampling_draws_from_the_processed_distribution():
    """Token frequencies of the sampler match softmax of transformers' processed scores."""
    import torch
    from transformers.generation import logits_process as hf

    from ledserve.engine.params import GenerationParams
    from ledserve.engine.search import TokenSearch

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (1, 30)).astype(np.float32)
    params = GenerationParams(
        do_sample=True,
        temperature=0.7,
        top_k=8,
        top_p=0.9,
        max_new_tokens=1,
        eos_token_id=(2,),
        decoder_start_token_id=2,
        num_return_sequences=4000,
        seed=1,
    )
    search = TokenSearch(params)
    search.step(torch.from_numpy(np.repeat(logits, 4000, axis=0)))
    counts = np.bincount(search.sequences[:, 1], minlength=30) / 4000
    processed = torch.from_numpy(logits)
    for warper in (
        hf.TemperatureLogitsWarper(0.7),
        hf.TopKLogitsWarper(8),
        hf.TopPLogitsWarper(0.9),
    ):
        processed = warper(torch.zeros(1, 1, dtype=torch.long), processed)
    want = torch.softmax(processed, -1).numpy()[0]
    assert np.all(counts[want == 0] == 0)  # never a token the warpers removed
    assert np.abs(counts - want).max() < 0.03  # 4000 draws: a few standard errors


def test_a_failing_request_does_not_stop_the_others(exported, checkpoint, rng, monkeypatch):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = list(rng.integers(5, model.config.vocab_size, 20))
    want = engine.generate([ids], max_new_tokens=6, min_new_tokens=6, num_beams=2)
    want_greedy = engine.generate([ids], max_new_tokens=6, repetition_penalty=1.3)
    good = engine.submit(ids, max_new_tokens=6, min_new_tokens=6, num_beams=2)
    bad = engine.submit(ids, max_new_tokens=6, min_new_tokens=6)
    bad_beam = engine.submit(ids, max_new_tokens=6, min_new_tokens=6, num_beams=2)
    greedy = engine.submit(ids, max_new_tokens=6, repetition_penalty=1.3)
    monkeypatch.setattr(bad.search, "advance", lambda tokens, scores=None: 1 / 0)
    monkeypatch.setattr(bad_beam.search, "propose", lambda log_probs: 1 / 0)
    finals = engine.run_until_done([good, bad, bad_beam, greedy])
    good_final, bad_final, bad_beam_final, greedy_final = finals
    for final in (bad_final, bad_beam_final):
        assert final.error == "ZeroDivisionError: division by zero"
        assert final.failure is Failure.ERROR
    assert good_final.results == want
    assert greedy_final.results == want_greedy


def test_a_failing_encoder_batch_ends_only_its_requests(exported, checkpoint, rng, monkeypatch):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    short = list(rng.integers(5, model.config.vocab_size, 10))
    long = list(rng.integers(5, model.config.vocab_size, 60))  # another encoder batch
    want = engine.generate([long], max_new_tokens=5, min_new_tokens=5)
    encode = engine.runtime.encode

    def encode_failing_short(ids, mask, glob, **options):
        if ids.shape[1] == len(short):
            raise RuntimeError("out of memory")
        return encode(ids, mask, glob, **options)

    monkeypatch.setattr(engine.runtime, "encode", encode_failing_short)
    bad = engine.submit(short, max_new_tokens=5)
    good = engine.submit(long, max_new_tokens=5, min_new_tokens=5)
    bad_final, good_final = engine.run_until_done([bad, good])
    assert bad_final.error == "encoder failed: RuntimeError: out of memory"
    assert bad_final.failure is Failure.OUT_OF_MEMORY
    assert good_final.results == want and good_final.finish_reasons == ["length"]
    assert bad_final.timings["total"] >= bad_final.timings["queue"] >= 0


def test_encoder_batches_respect_their_token_budget(exported, checkpoint, rng, monkeypatch):
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu", max_encoder_batch_tokens=100)
    rows = [list(rng.integers(5, model.config.vocab_size, n)) for n in (40, 41, 42, 45, 150)]
    want = [engine.generate([r], max_new_tokens=4)[0] for r in rows]
    shapes, encode = [], engine.runtime.encode

    def recording(ids, mask, glob, **options):
        shapes.append(ids.shape)
        return encode(ids, mask, glob, **options)

    monkeypatch.setattr(engine.runtime, "encode", recording)
    assert engine.generate(rows, max_new_tokens=4) == want
    assert sorted(shapes) == [(1, 150), (2, 41), (2, 45)]  # 40+41 | 42+45 | 150 alone


def test_out_of_vocabulary_and_bad_global_masks_are_refused(exported):
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    vocab = engine.vocab_size
    with pytest.raises(InvalidRequest, match=rf"input_ids holds {vocab}, outside the vocabulary"):
        engine.submit([5, vocab, 6])
    with pytest.raises(InvalidRequest, match="input_ids holds -1"):
        engine.submit([5, -1])
    with pytest.raises(InvalidRequest, match="global_attention_mask values must be 0 or 1"):
        engine.submit([5, 6], [0, 2])


def test_cross_attention_slots_are_reused_without_copying_the_others(exported, checkpoint, rng):
    """A leaving request frees its slot of cross K/V; a joining one is copied into a free slot;
    the other requests' K/V stay where they are (no reallocation, no copy)."""
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    vocab = model.config.vocab_size
    ids = [list(rng.integers(5, vocab, n)) for n in (30, 50, 45, 20)]
    long, short = (dict(max_new_tokens=n, min_new_tokens=n) for n in (12, 3))
    a = engine.submit(ids[0], max_new_tokens=2, min_new_tokens=2)
    b, d = engine.submit(ids[1], **long), engine.submit(ids[2], **long)
    engine.step()  # admits all three (encoder batches: 30 alone, 45 and 50 together)
    while not all("encoded" in r.times for r in (a, b, d)):
        engine.wait()
    decode_step(engine)  # they join the batch at this step boundary
    cross = engine._batch.cross
    assert cross.bound()[0].shape == (3, 50)  # room for 2 more (unbound)
    assert sorted(o for o in cross.owners if o is not None) == sorted([a.id, b.id, d.id])
    held = {owner: int(n) for owner, n in zip(cross.owners, cross.mask.sum(dim=1), strict=True)}
    assert held == {a.id: 30, b.id: 50, d.id: 45, None: 0}
    slots = list(cross.owners)
    pointers = [t.data_ptr() for t in cross.tensors]
    while not a.search.done:
        decode_step(engine)
    decode_step(engine)
    freed = slots.index(a.id)
    assert cross.owners == [None if s == a.id else s for s in slots]  # freed, none moved
    assert cross.mask[freed].sum() == 0
    c = engine.submit(ids[3], **short)
    while c.id not in cross.owners:
        decode_step(engine)
    assert cross.owners == [c.id if s == a.id else s for s in slots]  # into the free slot
    assert int(cross.mask[freed].sum()) == 20
    assert [t.data_ptr() for t in cross.tensors] == pointers
    finals = engine.run_until_done([b, d, c])
    alone = [
        Engine.from_artifacts(exported["fp32"], device="cpu").generate([i], **p)
        for i, p in ((ids[1], long), (ids[2], long), (ids[3], short))
    ]
    assert [f.results for f in finals] == alone


def test_running_requests_go_on_while_an_input_is_encoded(exported, checkpoint, rng, monkeypatch):
    """The encoder runs on its own thread: a request admitted later does not stop the tokens of a
    running one, however long its encoding takes (here: until the running one has finished)."""
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = list(rng.integers(5, model.config.vocab_size, 20))
    late_ids = list(rng.integers(5, model.config.vocab_size, 70))
    want = engine.generate([ids], max_new_tokens=8, min_new_tokens=8)
    release, encode = threading.Event(), engine.runtime.encode

    def slow_for_the_late_one(input_ids, mask, glob, **options):
        if input_ids.shape[1] == len(late_ids):
            assert release.wait(timeout=120)
        return encode(input_ids, mask, glob, **options)

    monkeypatch.setattr(engine.runtime, "encode", slow_for_the_late_one)
    running = engine.submit(ids, max_new_tokens=8, min_new_tokens=8)
    decode_step(engine)
    late = engine.submit(late_ids, max_new_tokens=3)
    (final,) = engine.run_until_done([running])
    assert final.results == want  # all 8 tokens, while the late input was still encoding
    assert late in engine.encoding and "encoded" not in late.times
    release.set()
    (late_final,) = engine.run_until_done([late])
    assert late_final.error is None and len(late_final.results[0]) > 1


def test_an_engine_nobody_holds_is_freed(exported, checkpoint, rng):
    """The encoder thread ends when idle, so it does not keep an unused engine (and its ONNX
    Runtime sessions) alive."""
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    engine.generate([list(rng.integers(5, model.config.vocab_size, 12))], max_new_tokens=2)
    gone = weakref.ref(engine)
    del engine
    deadline = time.monotonic() + 10
    while gone() is not None:
        assert time.monotonic() < deadline, "the engine is still referenced"
        time.sleep(0.1)
        gc.collect()


OUT_OF_MEMORY = [
    MemoryError(),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes"),
    RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"),
    RuntimeError("std::bad_alloc"),
]
OTHER = [ZeroDivisionError("division by zero"), ValueError("a non-contiguous tensor")]


@pytest.mark.parametrize("error", OUT_OF_MEMORY + OTHER, ids=repr)
def test_failures_are_classified(error):
    want = Failure.OUT_OF_MEMORY if error in OUT_OF_MEMORY else Failure.ERROR
    assert failure_of(error) is want


def test_a_greedy_step_keeps_the_decoders_cache_without_a_copy(exported, checkpoint, rng):
    """The decoder's `present` becomes the batch's cache as it is; a request that joins or leaves
    changes the batch's rows, and the tokens stay those of each request alone."""
    _, model = checkpoint
    rows = [list(rng.integers(5, model.config.vocab_size, n)) for n in (20, 24, 30)]
    params = [dict(max_new_tokens=n, min_new_tokens=n) for n in (9, 4, 6)]
    alone = [Engine.from_artifacts(exported["fp32"], device="cpu").generate([r], **p)
             for r, p in zip(rows, params, strict=True)]  # fmt: skip
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    presents, decode = [], engine.runtime.decode

    def recording(*args):
        logits, present = decode(*args)
        presents.append(present)
        return logits, present

    engine.runtime.decode = recording
    requests = [engine.submit(rows[0], **params[0])]
    decode_step(engine)
    decode_step(engine)
    assert engine._batch.cache is presents[-1]  # kept as the decoder returned it
    requests += [engine.submit(r, **p) for r, p in zip(rows[1:], params[1:], strict=True)]
    finals = engine.run_until_done(requests)
    assert [f.results for f in finals] == alone
    assert not engine.step() and engine._batch is None  # nothing held once all are done


def test_arena_shrinkage_after_a_long_input_changes_no_token(exported, checkpoint, rng):
    """Encoder runs that return ONNX Runtime's arena memory afterwards (every run here) give the
    same tokens as runs that keep it."""
    _, model = checkpoint
    rows, globals_ = random_inputs(rng, model.config.vocab_size, 3)
    params = dict(max_new_tokens=6, num_beams=2)
    keep = Engine.from_artifacts(exported["fp32"], device="cpu", shrink_after_tokens=None)
    shrink = Engine.from_artifacts(exported["fp32"], device="cpu", shrink_after_tokens=1)
    assert shrink.generate(rows, globals_, **params) == keep.generate(rows, globals_, **params)


def test_cpu_decode_share_pauses_the_loop_while_encoding(exported, checkpoint, rng):
    """With cpu_decode_share < 1 the loop thread pauses after a step while the encoder has work
    (here: inputs submitted beside a running stream); the stream's tokens do not change."""
    from ledserve.engine.engine import EngineConfig

    with pytest.raises(ValueError, match=r"cpu_decode_share must be between 0\.05 and 1, got 0"):
        EngineConfig(cpu_decode_share=0)
    _, model = checkpoint
    vocab = model.config.vocab_size
    ids = list(rng.integers(5, vocab, 30))
    want = Engine.from_artifacts(exported["fp32"], device="cpu").generate(
        [ids], max_new_tokens=12, min_new_tokens=12
    )
    engine = Engine.from_artifacts(exported["fp32"], device="cpu", cpu_decode_share=0.25)
    waits, wait = [], engine.wait

    def recorded(timeout=0.1):
        waits.append((timeout, bool(engine.encoder.in_flight)))
        wait(timeout)

    engine.wait = recorded
    engine.start()
    try:
        stream = engine.submit(ids, max_new_tokens=12, min_new_tokens=12)
        assert stream.events.get().tokens  # decoding
        loads = [
            engine.submit(list(rng.integers(5, vocab, 90)), max_new_tokens=2) for _ in range(4)
        ]
        finals = [engine.run_until_done([r])[0] for r in [stream, *loads]]
    finally:
        engine.stop()
    assert finals[0].results == want
    assert all(f.error is None for f in finals)
    assert any(encoding and timeout != 0.1 for timeout, encoding in waits)  # a step's pause


def test_non_finite_logits_fail_only_their_request(exported, checkpoint, rng, monkeypatch):
    """A row whose logits hold a NaN or an inf (an fp16 overflow) fails its request with a clear
    error; the others in the same decoder run go on with their own tokens."""
    _, model = checkpoint
    engine = Engine.from_artifacts(exported["fp32"], device="cpu")
    ids = list(rng.integers(5, model.config.vocab_size, 20))
    want = engine.generate([ids], max_new_tokens=6, min_new_tokens=6)
    requests = [
        engine.submit(ids, max_new_tokens=6, min_new_tokens=6),  # row 0: untouched
        engine.submit(ids, max_new_tokens=6, min_new_tokens=6),  # row 1: a NaN
        engine.submit(ids, max_new_tokens=6, min_new_tokens=6, num_beams=2),  # rows 2-3: an inf
    ]
    decode = engine.runtime.decode

    def poisoned(*args):
        logits, present = decode(*args)
        if len(logits) == 4:  # all three decode together
            logits[1, 7], logits[3, 5] = float("nan"), float("inf")
        return logits, present

    monkeypatch.setattr(engine.runtime, "decode", poisoned)
    finals = engine.run_until_done(requests)
    assert finals[0].results == want
    for final in finals[1:]:
        assert final.error == "the decoder produced non-finite logits (fp16 overflow?)"
