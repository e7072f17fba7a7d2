"""The server's own cost per token: the same clients streaming the same requests through the gRPC
server and directly on the engine in this process (no gRPC, no event loop), in rounds that
alternate the two. The engine's decoder steps are the same work on both sides; what the server
adds is its per-token path (events to the event loop, detokenizing, a message per chunk) and the
GIL it takes from the decode loop, which matters most where steps are short (a small model, or
a GPU).

    python -m ledserve.benchmarks.serving --artifacts DIR [--device cpu] [--streams 64] \\
        [--length 128] [--new-tokens 63] [--rounds 3]

Reports each side's tokens/s per round and the median of server ÷ direct over rounds. The
clients run in this process on both sides (threads), as in `ledserve bench`'s serving rows.
"""

import argparse
import json
import statistics
import sys
import time

from ledserve.benchmarks import machine, measure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.serving",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=2)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=63)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    machine.best_torch_threads()
    with open(f"{args.artifacts}/config.json") as f:
        vocab = json.load(f)["vocab_size"]
    rounds = []
    for k in range(args.rounds):
        result = {}
        for side in ("direct", "server"):
            print(f"[serving {time.strftime('%H:%M:%S')}] round {k + 1}: {side}",
                  file=sys.stderr, flush=True)  # fmt: skip
            run = measure.serve_throughput(args.artifacts, args.device, vocab, args.length,
                                           args.new_tokens, 1, [args.streams], args.per_client,
                                           direct=side == "direct")[0]  # fmt: skip
            result[side] = run["tokens_per_s"]
            result[f"{side}_steps"] = run["decoder_steps"]
        print(json.dumps(result), flush=True)
        rounds.append(result)
    summary = {
        "machine": machine.describe(args.device),
        "artifacts": args.artifacts,
        "streams": args.streams, "per_client": args.per_client, "length": args.length,
        "new_tokens": args.new_tokens, "rounds": rounds,
        "median_tokens_per_s": {side: statistics.median(r[side] for r in rounds)
                                for side in ("direct", "server")},
        "median_server_over_direct": statistics.median(r["server"] / r["direct"] for r in rounds),
    }  # fmt: skip
    measure.report(summary, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
