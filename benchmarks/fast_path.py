"""The CPU fast path side by side: encoder latency by length, the greedy decode step at batch 1 (the
median gap between streamed tokens), and a greedy request end to end, for transformers and for any
number of artifacts folders (fp32, int8, an older export, ...). transformers' baselines: `default`
(its default configuration), `best` (THP allocator on, threads = cores) and `int8` (`best` with
PyTorch's dynamic int8 quantization of every Linear: the same-precision baseline of int8 artifacts;
by default `default,best`, and `int8` too when an artifacts folder is int8). Every side runs in its
own process (the allocator setting is read at start), one after the other, medians of `--repeats`
after a warm-up. With `--rounds N` the whole sequence of sides runs N times, and each side's
end-to-end time is also given as a ratio to each baseline's in the same round, with the median of
those ratios: sides that run minutes apart drift apart on a shared machine, rounds do not share that
drift (`--lengths ""` skips the encoder-only timings).

    python -m ledserve.benchmarks.fast_path --checkpoint DIR \
        --artifacts fp32=DIR --artifacts int8=DIR [--lengths 512,2048,...] \
        [--generate 4096:128] [--repeats 3] [--baselines default,best,int8] [--rounds 1]

Prints one JSON line per side; `--out FILE` also writes them all as one JSON list (with
`--rounds`, each result names its round, and a last object holds the ratios to each baseline).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ledserve.benchmarks import machine
from ledserve.benchmarks.measure import holds_int8

BASELINES = {  # name: (environment, dtype); torch threads = cores in every child
    "default": ({"THP_MEM_ALLOC_ENABLE": "0"}, "fp32"),
    "best": (machine.BEST_TORCH_ENV, "fp32"),
    "int8": (machine.BEST_TORCH_ENV, "int8"),
}


def _median(repeats: int, fn) -> float:
    fn()  # warm-up at this shape
    return statistics.median(_timed(fn) for _ in range(repeats))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _side(kind: str, source: str, lengths, generate, repeats: int, dtype: str) -> dict:
    from ledserve.benchmarks.measure import Baseline, InProcess, inter_token, make_input

    if kind == "transformers":
        machine.best_torch_threads()
        side = Baseline(source, "cpu", dtype)
        vocab = side.model.config.vocab_size
    else:
        side = InProcess(source, "cpu")
        vocab, dtype = side.engine.vocab_size, side.engine.manifest.dtype
    out = {"dtype": dtype, "encoder_s": {}}
    for length in lengths:
        ids, glob = make_input(vocab, length, seed=length)
        out["encoder_s"][length] = _median(repeats, lambda: side.encode(ids, glob))  # noqa: B023
    length, new = generate
    ids, glob = make_input(vocab, length, seed=length)
    first = _median(repeats, lambda: side.generate(ids, glob, 1, 1))
    traces = []
    full = _median(repeats, lambda: traces.append(side.generate(ids, glob, new, 1)))
    out["generate"] = {"input_tokens": length, "new_tokens": new, "end_to_end_s": full,
                       "first_token_s": first,
                       "step_s": inter_token(traces[1:])["p50_s"],  # [0]: the warm-up
                       "tokens": traces[-1].tokens}  # fmt: skip
    return out


def measure(checkpoint, artifacts: dict, lengths, generate, repeats: int, baselines):
    """Yields one result per side, each measured in a child process."""
    sides = [(f"transformers-{b}", "transformers", checkpoint, *BASELINES[b]) for b in baselines]
    sides += [(f"engine-{name}", "engine", folder, {}, None) for name, folder in artifacts.items()]
    for name, kind, source, env, dtype in sides:
        args = ["--child", kind, "--source", str(source), "--lengths", ",".join(map(str, lengths)),
                "--generate", f"{generate[0]}:{generate[1]}", "--repeats", str(repeats),
                *(["--dtype", dtype] if dtype else [])]  # fmt: skip
        print(f"[fast_path {time.strftime('%H:%M:%S')}] {name}", file=sys.stderr, flush=True)
        yield {"side": name, **env, **machine.run_child("ledserve.benchmarks.fast_path", args, env)}


def baselines_for(artifacts: dict, requested: str | None) -> list[str]:
    """The baselines asked for (comma-separated), else default and best, and int8 too when an
    artifacts folder holds int8 graphs."""
    if requested is None:
        requested = "default,best" + (",int8" if holds_int8(artifacts.values()) else "")
    return [b for b in requested.split(",") if b]


def round_ratios(results: list[dict], baseline: str | None = None) -> dict:
    """Per side, the baseline's (the first one by default) end-to-end time over the side's, round
    by round, and the median: {"reference": baseline, "sides": {side: {"per_round": [...],
    "median": x}}}."""
    rounds = sorted({r["round"] for r in results})
    baseline = baseline or next(r["side"] for r in results if r["side"].startswith("transformers"))
    e2e = {(r["round"], r["side"]): r["generate"]["end_to_end_s"] for r in results
           if "generate" in r}  # fmt: skip
    sides = {}
    for side in dict.fromkeys(r["side"] for r in results):
        ratios = [e2e[k, baseline] / e2e[k, side] for k in rounds
                  if (k, baseline) in e2e and (k, side) in e2e]  # fmt: skip
        if ratios and side != baseline:
            sides[side] = {"per_round": ratios, "median": statistics.median(ratios)}
    return {"reference": baseline, "sides": sides}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.fast_path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", help="the checkpoint the artifacts came from")
    parser.add_argument("--artifacts", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192,16384")
    parser.add_argument("--generate", default="4096:128", help="input:new tokens, greedy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baselines", help="of default, best, int8 (default: see above)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", choices=("transformers", "engine"), help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x]
    generate = tuple(int(x) for x in args.generate.split(":"))
    if args.child:
        result = _side(args.child, args.source, lengths, generate, args.repeats, args.dtype)
        print(json.dumps(result))
        return 0
    artifacts = dict(a.split("=", 1) for a in args.artifacts)
    baselines = baselines_for(artifacts, args.baselines)
    if set(baselines) - BASELINES.keys():
        parser.error(f"--baselines: each of {', '.join(BASELINES)}")
    if baselines and not args.checkpoint:
        parser.error("--checkpoint is needed for the transformers baselines")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    results, reference = [], None
    for round_ in range(args.rounds):
        sides = measure(args.checkpoint, artifacts, lengths, generate, args.repeats, baselines)
        for result in sides:
            tokens = result.get("generate", {}).get("tokens")
            if result["side"].startswith("transformers"):
                reference = reference or tokens
            elif tokens is not None and reference is not None:
                result["tokens_equal_to_transformers"] = tokens == reference
            if args.rounds > 1:
                result["round"] = round_
            results.append(result)
            shown = {**result, "generate": {k: v for k, v in result.get("generate", {}).items()
                                            if k != "tokens"}}  # fmt: skip
            print(json.dumps(shown), flush=True)
    if args.rounds > 1 and baselines:
        ratios = [round_ratios(results, f"transformers-{b}") for b in baselines]
        results.append({"ratios_to": ratios})
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
