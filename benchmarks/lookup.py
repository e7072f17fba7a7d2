"""Prompt lookup against plain greedy, side by side in one process: decoder runs per answer,
tokens per run, and wall time, on the demo model's held-out QA documents one request at a time
and `--streams` at once, and (with `--artifacts`) on another model with copy-heavy inputs (random
ids, that model's own greedy answer to them, more random ids, the answer again). The sides
alternate per round; every answer is compared with plain greedy's.

    python -m ledserve.benchmarks.lookup [--documents 24] [--streams 16] [--draft 10]
        [--rounds 3] [--artifacts DIR] [--out FILE]
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np


def _run(engine, prompts, params, concurrent: bool) -> tuple[list, float, int]:
    """(answers, seconds, decoder runs) of the prompts, one after another or all at once."""
    calls, start = engine.decoder_calls, time.perf_counter()
    if concurrent:
        answers = engine.generate([p[0] for p in prompts], [p[1] for p in prompts], **params)
    else:
        answers = [engine.generate([ids], [glob], **params)[0] for ids, glob in prompts]
    return answers, time.perf_counter() - start, engine.decoder_calls - calls


def compare(engine, prompts, draft: int, rounds: int, concurrent: bool, **params) -> dict:
    sides = {"greedy": dict(params), "prompt_lookup": {**params, "prompt_lookup_num_tokens": draft}}
    runs = {name: [] for name in sides}
    answers = {}
    _run(engine, prompts[:2], params, concurrent)  # warm-up
    for r in range(rounds):
        for name, side in sides.items() if r % 2 == 0 else reversed(sides.items()):
            print(f"[lookup] round {r}: {name}", file=sys.stderr, flush=True)
            drafted, kept = engine.draft_tokens, engine.accepted_draft_tokens
            answers[name], seconds, calls = _run(engine, prompts, side, concurrent)
            runs[name].append({"seconds": seconds, "decoder_runs": calls,
                               "drafted": engine.draft_tokens - drafted,
                               "accepted": engine.accepted_draft_tokens - kept})  # fmt: skip
    tokens = sum(len(a) - 1 for a in answers["greedy"])
    same = zip(answers["greedy"], answers["prompt_lookup"], strict=True)
    out = {"requests": len(prompts), "generated_tokens": tokens,
           "identical_answers": sum(a == b for a, b in same)}  # fmt: skip
    for name, rs in runs.items():
        calls = rs[0]["decoder_runs"]
        out[name] = {
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "decoder_runs": calls,
            "decoder_runs_per_answer": calls / len(prompts),
            "tokens_per_decoder_run": tokens / calls,
            "drafted": rs[0]["drafted"],
            "accepted": rs[0]["accepted"],
            "runs": rs,
        }
    g, p = out["greedy"], out["prompt_lookup"]
    out["decoder_run_ratio"] = g["decoder_runs"] / p["decoder_runs"]
    out["wall_speedup"] = g["median_seconds"] / p["median_seconds"]
    return out


def demo_prompts(engine, count: int):
    from ledserve.demo.synthetic import examples
    from ledserve.demo.train import HELD_OUT_SEED

    prompts = [engine.prompts.build(e.question, e.context) for e in examples(HELD_OUT_SEED, count)]
    return [(p.input_ids, p.global_attention_mask) for p in prompts]


def copy_heavy_prompts(engine, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(count):
        head = rng.integers(5, engine.vocab_size, 400).tolist()
        answer = engine.generate([head], max_new_tokens=32, min_new_tokens=32)[0][1:]
        tail = rng.integers(5, engine.vocab_size, 80).tolist()
        ids = head + answer + tail + answer
        prompts.append((ids, [int(i < 16) for i in range(len(ids))]))
    return prompts


def emit(result: dict, out: str | None):
    """Print the results as JSON, and write them to `out` too where given."""
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.lookup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--draft", type=int, default=10, help="prompt_lookup_num_tokens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--artifacts", help="also: this model on copy-heavy inputs")
    parser.add_argument("--out", help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    from ledserve.benchmarks.machine import describe
    from ledserve.demo.model import default_artifacts
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(default_artifacts(), device="cpu")
    prompts = demo_prompts(engine, args.documents)
    result = {"machine": describe("cpu"), "draft": args.draft, "demo": {
        "one_at_a_time": compare(engine, prompts, args.draft, args.rounds, False),
        f"{args.streams}_at_once": compare(engine, prompts[: args.streams], args.draft,
                                           args.rounds, True),
    }}  # fmt: skip
    if args.artifacts:
        other = Engine.from_artifacts(args.artifacts, device="cpu")
        copy = copy_heavy_prompts(other, 4)
        fixed = dict(max_new_tokens=64, min_new_tokens=64)
        result["copy_heavy"] = {
            "artifacts": args.artifacts,
            "one_at_a_time": compare(other, copy, args.draft, args.rounds, False, **fixed),
        }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
