"""What the optional generation features cost: the same requests plain and with token scores
(`output_scores`, `top_n_tokens`), stop strings that never match (checked at every token) and
bans (`bad_words_ids`, `suppress_tokens`, an encoder n-gram ban), side by side in one process,
the sides alternating per round. Greedy and beam 4, the demo model's held-out documents all at
once (and, with `--artifacts`, another model on random inputs). Bans change the answers; the
others do not (checked).

    python -m ledserve.benchmarks.features [--documents 16] [--rounds 3] [--artifacts DIR]
        [--out FILE]
"""

import argparse
import statistics
import sys
import time

import numpy as np


def sides(vocab: int) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    words = [rng.integers(5, vocab, int(rng.integers(1, 4))).tolist() for _ in range(64)]
    return {
        "plain": {},
        "scores": {"output_scores": True, "top_n_tokens": 5},
        "stops": {"stop": ["§§", "<<END>>", "\u2603"]},  # never generated: checked every token
        "bans": {
            "bad_words_ids": words,
            "suppress_tokens": list(range(100, 132)),
            "encoder_no_repeat_ngram_size": 4,
        },
    }


def compare(engine, prompts, rounds: int, **params) -> dict:
    """Median seconds per side for the prompts at once, and the ratio to plain."""
    runs, answers = {name: [] for name in sides(engine.vocab_size)}, {}
    engine.generate([p[0] for p in prompts[:2]], [p[1] for p in prompts[:2]], **params)  # warm-up
    for r in range(rounds):
        order = list(sides(engine.vocab_size).items())
        for name, side in order if r % 2 == 0 else reversed(order):
            print(f"[features] round {r}: {name}", file=sys.stderr, flush=True)
            start = time.perf_counter()
            answers[name] = engine.generate([p[0] for p in prompts], [p[1] for p in prompts],
                                            **params, **side)  # fmt: skip
            runs[name].append(time.perf_counter() - start)
    plain = statistics.median(runs["plain"])
    return {
        name: {"median_seconds": statistics.median(s), "ratio_to_plain":
               statistics.median(s) / plain, "same_answers_as_plain": answers[name] ==
               answers["plain"], "runs": s}
        for name, s in runs.items()
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.features",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--artifacts", help="also: this model on random 512-token inputs")
    parser.add_argument("--out", help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    from ledserve.benchmarks.lookup import demo_prompts, emit
    from ledserve.benchmarks.machine import describe
    from ledserve.demo.model import default_artifacts
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(default_artifacts(), device="cpu")
    prompts = demo_prompts(engine, args.documents)
    result = {"machine": describe("cpu"), "demo": {
        "greedy": compare(engine, prompts, args.rounds),
        "beam4": compare(engine, prompts, args.rounds, num_beams=4),
    }}  # fmt: skip
    if args.artifacts:
        other = Engine.from_artifacts(args.artifacts, device="cpu")
        rng = np.random.default_rng(1)
        inputs = [(rng.integers(5, other.vocab_size, 512).tolist(), None) for _ in range(8)]
        fixed = dict(max_new_tokens=32, min_new_tokens=32)
        result["other"] = {"artifacts": args.artifacts, "greedy_8x512_in_32_out":
                           compare(other, inputs, args.rounds, **fixed)}  # fmt: skip
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
