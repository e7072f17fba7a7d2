"""Many streams through the server against transformers serving one request at a time, side by side:
rounds alternate the baselines (greedy requests one after another, in this process, with PyTorch's
best CPU setting when the process runs with THP_MEM_ALLOC_ENABLE=1 and threads = cores; `--baselines
fp32,int8` adds PyTorch's dynamic int8 quantization, the same precision as int8 artifacts, by
default when an artifacts folder is int8) and the gRPC server on each artifacts folder and each
`--shares` value of the engine's `cpu_decode_share` (`--streams` clients, each streaming
`--per-client` requests back to back). Inputs of `--length` tokens, `--new-tokens` tokens each (EOS
suppressed). Reports each side's tokens/s per round, and the median over rounds of each engine's
ratio to each baseline of its own round.

    THP_MEM_ALLOC_ENABLE=1 python -m ledserve.benchmarks.streams --checkpoint DIR \
        --artifacts fp32=DIR [--artifacts int8=DIR] [--baselines fp32,int8] [--shares 1,0.5] \
        [--streams 16] [--rounds 3]
"""

import argparse
import json
import statistics
import sys
import time

from ledserve.benchmarks import machine, measure


def baseline_rate(side, vocab: int, length: int, new_tokens: int, requests: int) -> float:
    """Tokens/s of `requests` greedy requests served one after another."""
    start = time.perf_counter()
    for k in range(requests):
        ids, glob = measure.make_input(vocab, length, seed=7 + k)
        side.generate(ids, glob, new_tokens, 1)
    return requests * new_tokens / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.streams",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="the artifacts' checkpoint")
    parser.add_argument("--artifacts", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--baseline-requests", type=int, default=2, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--shares",
        default="1.0",
        help="the engine's cpu_decode_share values to run (comma-separated)",
    )
    parser.add_argument("--baselines", help="transformers' dtypes: fp32, int8 (default: see above)")
    parser.add_argument("--out", help="also write the results here (JSON)")
    args = parser.parse_args(argv)  # fmt: skip
    machine.best_torch_threads()
    shares = [float(x) for x in args.shares.split(",")]
    sides = {}  # side name -> (artifacts folder, cpu_decode_share)
    for name, folder in (a.split("=", 1) for a in args.artifacts):
        for share in shares:
            sides[name if len(shares) == 1 else f"{name}-share{share:g}"] = (folder, share)
    if args.baselines is None:
        int8 = measure.holds_int8(folder for folder, _ in sides.values())
        args.baselines = "fp32,int8" if int8 else "fp32"
    dtypes = args.baselines.split(",")
    if set(dtypes) - {"fp32", "int8"}:
        parser.error(f"--baselines: fp32 and/or int8, got {args.baselines!r}")
    baselines = {  # "transformers" (fp32), "transformers-int8"
        "transformers" if dtype == "fp32" else f"transformers-{dtype}":
            measure.Baseline(args.checkpoint, "cpu", dtype)
        for dtype in dtypes
    }  # fmt: skip
    vocab = next(iter(baselines.values())).model.config.vocab_size
    for baseline in baselines.values():
        baseline.generate(*measure.make_input(vocab, args.length, seed=1), 4, 1)  # warm-up
    rounds = []
    for k in range(args.rounds):
        say = f"[streams {time.strftime('%H:%M:%S')}] round {k + 1}"
        result = {}
        for base, baseline in baselines.items():
            print(f"{say}: {base}", file=sys.stderr, flush=True)
            result[base] = baseline_rate(baseline, vocab, args.length, args.new_tokens,
                                         args.baseline_requests)  # fmt: skip
        for name, (folder, share) in sides.items():
            print(f"{say}: engine {name}", file=sys.stderr, flush=True)
            served = measure.serve_throughput(folder, "cpu", vocab, args.length, args.new_tokens,
                                              1, [args.streams], args.per_client,
                                              cpu_decode_share=share)[0]  # fmt: skip
            result[name] = served["tokens_per_s"]
            result[f"{name}_steps"] = served["decoder_steps"]
        print(json.dumps(result), flush=True)
        rounds.append(result)
    summary = {
        "machine": machine.describe("cpu"),
        "streams": args.streams, "length": args.length, "new_tokens": args.new_tokens,
        "rounds": rounds,
        "median_tokens_per_s": {side: statistics.median(r[side] for r in rounds)
                                for side in [*baselines, *sides]},
        "median_ratio_to": {base: {name: statistics.median(r[name] / r[base] for r in rounds)
                                   for name in sides} for base in baselines},
    }  # fmt: skip
    measure.report(summary, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
