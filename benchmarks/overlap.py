"""A running stream while long inputs are encoded: how much of its unloaded token rate it keeps.

The engine runs its loop thread in-process. One greedy request streams `new_tokens` tokens (EOS
suppressed); after `warmup` of them, `count` inputs of `length` tokens are submitted at once. The
stream's rate alone (the tokens before that submission) is set beside its rate from the
submission until every long input was encoded (or the stream ended), with its inter-token
p50/p95 in that window. `python -m ledserve.benchmarks.overlap --artifacts DIR` runs it alone;
`ledserve bench` includes it.
"""

import argparse
import json
import time

import numpy as np

from ledserve.benchmarks.measure import make_input


def measure(
    artifacts, device: str, length: int, count: int = 8, new_tokens: int | None = None,
    warmup: int = 24, input_tokens: int = 64, cpu_decode_share: float = 1.0,
) -> dict:  # fmt: skip
    from ledserve.engine.artifacts import Artifacts
    from ledserve.engine.engine import Engine, EngineConfig
    from ledserve.engine.runtime import Runtime

    runtime = Runtime(Artifacts.load(artifacts, verify=False), device)
    model = runtime.artifacts.manifest.model
    length = min(length, model.max_encoder_positions)
    new_tokens = new_tokens or model.max_decoder_positions - 1
    warmup = min(warmup, new_tokens // 4)
    config = EngineConfig(max_rows=count + 1, max_encoder_tokens=count * length + input_tokens,
                          cpu_decode_share=cpu_decode_share)  # fmt: skip
    engine = Engine(runtime, config)
    engine.start()
    try:
        ids, glob = make_input(model.vocab_size, input_tokens, seed=1)
        engine.generate([ids], [glob], max_new_tokens=2)  # warm-up: sessions, allocations
        stream = engine.submit(ids, glob, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        stamps, loads, submitted = [], [], None
        while True:
            event = stream.events.get()
            stamps += [time.perf_counter()] * len(event.tokens)
            if submitted is None and len(stamps) >= warmup:
                submitted = time.perf_counter()
                for k in range(count):
                    long_ids, long_glob = make_input(model.vocab_size, length, seed=100 + k)
                    loads.append(engine.submit(long_ids, long_glob, max_new_tokens=1))
            if event.finished:
                break
        for load in loads:
            while not load.events.get().finished:
                pass
    finally:
        engine.stop()
    if submitted is None:
        raise SystemExit(f"error: the stream ended before {warmup} tokens; raise new_tokens")
    encoded = max(load.times.get("encoded", np.inf) for load in loads)
    end = min(encoded, stamps[-1])
    before = [t for t in stamps if t <= submitted]
    during = [t for t in stamps if submitted < t <= end]
    alone_rate = (len(before) - 1) / (before[-1] - before[0])
    during_rate = len(during) / (end - submitted)
    gaps = np.diff([submitted, *during, end])
    return {
        "input_tokens": input_tokens,
        "load": {"inputs": count, "tokens": length},
        "encoding_s": encoded - submitted,
        "window_s": end - submitted,
        "stream_ended_first": bool(stamps[-1] < encoded),
        "tokens_per_s_alone": alone_rate,
        "tokens_per_s_while_encoding": during_rate,
        "kept": during_rate / alone_rate,
        "tokens_while_encoding": len(during),
        "inter_token_while_encoding": {
            "p50_s": float(np.percentile(gaps, 50)),
            "p95_s": float(np.percentile(gaps, 95)),
            "max_s": float(gaps.max()),
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledserve.benchmarks.overlap",
                                     description=__doc__)  # fmt: skip
    parser.add_argument("--artifacts", required=True, help="an exported artifacts folder")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--length", type=int, default=4096, help="tokens of each long input")
    parser.add_argument("--count", type=int, default=8, help="long inputs submitted at once")
    parser.add_argument("--new-tokens", type=int, help="the stream's tokens (default: the most)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-decode-share", type=float, default=1.0,
                        help="the engine's cpu_decode_share")  # fmt: skip
    args = parser.parse_args(argv)
    options = dict(new_tokens=args.new_tokens, cpu_decode_share=args.cpu_decode_share)
    runs = [
        measure(args.artifacts, args.device, args.length, args.count, **options)
        for _ in range(args.repeats)
    ]
    print(json.dumps({"runs": runs, "median_kept": float(np.median([r["kept"] for r in runs]))},
                     indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
