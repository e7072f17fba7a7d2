"""Artifacts folders against each other in one process, runs alternating (A, B, C, A, B, C, ...)
so that a noisy machine's drift falls on every side alike: encoder latency by input length and
the greedy decode step at batch 1 (the median gap between streamed tokens).

    python -m ledserve.benchmarks.alternate --artifacts old=DIR --artifacts new=DIR \
        [--lengths 512,2048,4096] [--globals 16] [--step-input 512] [--new-tokens 32] \
        [--repeats 7]

Prints one JSON object: per side, medians and every run; ratios against the first side.
"""

import argparse
import json
import statistics
import time


def measure(artifacts: dict, lengths, step_input: int, new_tokens: int, repeats: int,
            globals_: int = 16) -> dict:  # fmt: skip
    from ledserve.benchmarks.measure import InProcess, inter_token, make_input

    sides = {name: InProcess(folder, "cpu") for name, folder in artifacts.items()}
    vocab = min(side.engine.vocab_size for side in sides.values())
    runs = {name: {"encoder_s": {n: [] for n in lengths}, "step_s": []} for name in sides}
    for length in lengths:
        ids, glob = make_input(vocab, length, seed=length, globals_=globals_)
        for r in range(repeats + 1):  # the first round warms each side up at this length
            for name, side in sides.items():
                start = time.perf_counter()
                side.encode(ids, glob)
                if r:
                    runs[name]["encoder_s"][length].append(time.perf_counter() - start)
    ids, glob = make_input(vocab, step_input, seed=step_input)
    for r in range(repeats + 1):
        for name, side in sides.items():
            trace = side.generate(ids, glob, new_tokens, 1)
            if r:
                runs[name]["step_s"].append(inter_token([trace])["p50_s"])
    medians = {
        name: {"encoder_s": {n: statistics.median(v) for n, v in r["encoder_s"].items()},
               "step_s": statistics.median(r["step_s"])}
        for name, r in runs.items()
    }  # fmt: skip
    first = medians[next(iter(sides))]
    out = {"lengths": lengths, "global_tokens": globals_, "step_input_tokens": step_input,
           "new_tokens": new_tokens, "repeats": repeats, "sides": {}}  # fmt: skip
    for name, m in medians.items():
        out["sides"][name] = {
            **m,
            "encoder_speedup_vs_first": {
                n: first["encoder_s"][n] / m["encoder_s"][n] for n in lengths
            },
            "step_speedup_vs_first": first["step_s"] / m["step_s"],
            "runs": runs[name],
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.alternate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifacts", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--lengths", default="512,2048,4096")
    parser.add_argument("--globals", type=int, default=16, help="global tokens of each input")
    parser.add_argument("--step-input", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    artifacts = dict(a.split("=", 1) for a in args.artifacts)
    lengths = [int(x) for x in args.lengths.split(",")]
    result = measure(
        artifacts, lengths, args.step_input, args.new_tokens, args.repeats, args.globals
    )
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
