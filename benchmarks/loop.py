"""The decode loop's own cost: with `rows` greedy requests decoding together, the engine's step
time beside the time ONNX Runtime's decoder run takes inside it (the rest is the loop: search,
processors, cache bookkeeping, binding); the wall time of `rows` requests against one; and that
wall time against bare ONNX Runtime calls making the same encoder runs (the engine's encoder
batches) and the same decoder runs (all rows, present fed back as past), without the engine: plain
`session.run` on numpy, and the engine's IO-bound `Runtime` calls; the faster is the baseline.

    python -m ledserve.benchmarks.loop --artifacts DIR [--rows 64] [--input-tokens 256]

Driven in this thread (no loop thread); medians of `--steps` steps and of `--repeats` runs.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch


def timed_steps(engine, requests: list, steps: int) -> tuple[list[float], list[float], int]:
    """Once `requests` (just submitted) are all encoded and decoding: each of `steps` steps'
    wall time, the ONNX Runtime time inside it, and the decoder runs they made; the requests
    are then cancelled."""
    engine.step()  # admits them; the encoder thread encodes them
    while not all("encoded" in r.times for r in requests):
        time.sleep(0.01)
    engine.step()  # all join: from here each step decodes all their rows
    times, runs, run, calls = [], [], engine.runtime._run, engine.decoder_calls

    def timed(session, binding, *shrink):
        start = time.perf_counter()
        run(session, binding, *shrink)
        runs[-1] += time.perf_counter() - start

    engine.runtime._run = timed
    try:
        for _ in range(steps):
            runs.append(0.0)
            start = time.perf_counter()
            engine.step()
            times.append(time.perf_counter() - start)
    finally:
        del engine.runtime._run
    calls = engine.decoder_calls - calls
    for r in requests:
        engine.cancel(r)
    engine.run_until_done(requests)
    return times, runs, calls


def step_cost(engine, vocab: int, rows: int, input_tokens: int, steps: int) -> dict:
    """Median step and decoder-run times once `rows` requests are all encoded and decoding."""
    rng = np.random.default_rng(0)
    requests = [
        engine.submit(list(rng.integers(5, vocab, input_tokens)), max_new_tokens=steps + 8,
                      min_new_tokens=steps + 8)
        for _ in range(rows)
    ]  # fmt: skip
    times, runs, _ = timed_steps(engine, requests, steps)
    step, ort = statistics.median(times), statistics.median(runs)
    return {"rows": rows, "step_s": step, "ort_run_s": ort, "step_over_run": step / ort}


def wall_time(engine, vocab: int, rows: int, input_tokens: int, new_tokens: int) -> float:
    rng = np.random.default_rng(1)
    inputs = [list(rng.integers(5, vocab, input_tokens)) for _ in range(rows)]
    start = time.perf_counter()
    engine.generate(inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return time.perf_counter() - start


def _encoder_batches(engine, vocab: int, rows: int, input_tokens: int) -> list[np.ndarray]:
    """The inputs of `wall_time`, grouped as the engine's encoder batches them: [batch, tokens]."""
    from ledserve.engine.scheduler import by_length

    rng = np.random.default_rng(1)

    class Sized:  # what by_length reads of a request
        def __init__(self, ids):
            self.input_ids = ids

    inputs = [Sized(rng.integers(5, vocab, input_tokens)) for _ in range(rows)]
    batches = by_length(inputs, engine.config.max_encoder_batch_tokens)
    return [np.stack([r.input_ids for r in batch]) for batch in batches]


def bare_runtime(engine, vocab: int, rows: int, input_tokens: int, new_tokens: int) -> float:
    """Seconds that bare ONNX Runtime calls take for the encoder and decoder runs of `wall_time`
    (same graphs and sessions, same encoder batches, greedy argmax on the host)."""
    runtime, names = engine.runtime, engine.runtime.artifacts.tensor_name
    batches = _encoder_batches(engine, vocab, rows, input_tokens)
    layers, kinds = range(runtime.layers), ("key", "value")
    start = time.perf_counter()
    cross = {f"cross_{k}": [] for k in kinds}
    for ids in batches:
        ones = np.ones_like(ids)
        out = runtime.encoder.run(None, {"input_ids": ids, "attention_mask": ones,
                                         "global_attention_mask": np.zeros_like(ids)})  # fmt: skip
        named = dict(zip([o.name for o in runtime.encoder.get_outputs()], out, strict=True))
        for k in kinds:
            cross[f"cross_{k}"].append([named[names(f"cross_{k}", i)] for i in layers])
    feed = {"encoder_attention_mask": np.ones((rows, input_tokens), np.int64),
            "request_rows": np.arange(rows)[:, None], "row_slots": np.arange(rows)}  # fmt: skip
    for k in kinds:
        for i in layers:
            feed[names(f"cross_{k}", i)] = np.concatenate([b[i] for b in cross[f"cross_{k}"]])
    empty = np.zeros((rows, runtime.heads, 0, runtime.head_dim), np.float32)
    past = {names(f"past_{k}", i): empty for k in kinds for i in layers}
    tokens = np.full((rows, 1), engine.defaults["decoder_start_token_id"], np.int64)
    outputs = [o.name for o in runtime.decoder.get_outputs()]
    for step in range(new_tokens):
        mask = np.ones((rows, step + 1), np.int64)
        out = runtime.decoder.run(None, {**feed, **past, "input_ids": tokens,
                                         "attention_mask": mask})  # fmt: skip
        named = dict(zip(outputs, out, strict=True))
        tokens = named["logits"][:, -1].argmax(-1)[:, None]
        past = {
            names(f"past_{k}", i): named[names(f"present_{k}", i)] for k in kinds for i in layers
        }
    return time.perf_counter() - start


def bare_bound(engine, vocab: int, rows: int, input_tokens: int, new_tokens: int) -> float:
    """`bare_runtime` through the engine's own IO-bound calls (`Runtime.encode` / `decode`, torch
    tensors bound by pointer), still without scheduler, search or processors."""
    runtime = engine.runtime
    batches = _encoder_batches(engine, vocab, rows, input_tokens)
    start = time.perf_counter()
    crosses = []
    for ids in batches:
        crosses += runtime.encode(ids, np.ones_like(ids), np.zeros_like(ids))
    cross = [torch.cat([c[i] for c in crosses]) for i in range(len(crosses[0]))]
    mask = torch.ones((rows, input_tokens), dtype=torch.int64, device=runtime.device)
    request_rows = torch.arange(rows, device=runtime.device)[:, None]
    row_slots = torch.arange(rows, device=runtime.device)
    cache = runtime.empty_cache(rows)
    tokens = np.full(rows, engine.defaults["decoder_start_token_id"], np.int64)
    for _ in range(new_tokens):
        logits, cache = runtime.decode(tokens, cache, mask, cross, request_rows, row_slots)
        tokens = logits.argmax(dim=-1).cpu().numpy()
    return time.perf_counter() - start


def measure(artifacts, device="cpu", rows=64, input_tokens=256, new_tokens=32, steps=30,
            repeats=3) -> dict:  # fmt: skip
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(artifacts, device=device, verify=False, max_rows=rows)
    vocab = engine.vocab_size
    wall_time(engine, vocab, rows, input_tokens, 2)  # warm-up
    costs = [step_cost(engine, vocab, rows, input_tokens, steps) for _ in range(repeats)]
    one = [wall_time(engine, vocab, 1, input_tokens, new_tokens) for _ in range(repeats)]
    many, bare, bound = [], [], []
    for _ in range(repeats):  # alternated, so that the machine's noise falls on all alike
        many.append(wall_time(engine, vocab, rows, input_tokens, new_tokens))
        bare.append(bare_runtime(engine, vocab, rows, input_tokens, new_tokens))
        bound.append(bare_bound(engine, vocab, rows, input_tokens, new_tokens))
    best = [min(b, c) for b, c in zip(bare, bound, strict=True)]  # the baseline's best form
    return {
        "rows": rows, "input_tokens": input_tokens, "new_tokens": new_tokens,
        "step_s": statistics.median(c["step_s"] for c in costs),
        "ort_run_s": statistics.median(c["ort_run_s"] for c in costs),
        "step_over_run": statistics.median(c["step_over_run"] for c in costs),
        "one_request_s": statistics.median(one),
        "all_requests_s": statistics.median(many),
        "wall_ratio": statistics.median(many) / statistics.median(one),
        "bare_ort_run_s": statistics.median(bare),
        "bare_ort_bound_s": statistics.median(bound),
        "over_bare_ort": statistics.median(m / b for m, b in zip(many, best, strict=True)),
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledserve.benchmarks.loop", description=__doc__)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--input-tokens", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = measure(args.artifacts, args.device, args.rows, args.input_tokens, args.new_tokens,
                     args.steps, args.repeats)  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
