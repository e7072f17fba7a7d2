"""Peak memory and time of one long request, each length and side in its own process: the
engine (a request, then a second one of the same length) and transformers `generate` (the same
request twice, in its best CPU configuration: THP allocator on, threads = cores).

    python -m ledserve.benchmarks.memory --artifacts DIR --checkpoint DIR \
        [--lengths 4096,8192,16384] [--new-tokens 4] [--sides engine,transformers]

Prints one JSON line per (side, length): peak RSS after each of the two requests and their times.
A second request of the same length should add nothing and cost no more than the first.
"""

import argparse
import json
import resource
import time

from ledserve.benchmarks import machine


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inputs(vocab: int, length: int):
    from ledserve.benchmarks.measure import make_input

    return make_input(vocab, length, seed=length)


def _engine_side(artifacts: str, length: int, new_tokens: int, device: str) -> dict:
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(artifacts, device=device, verify=False)  # server defaults
    ids, glob = _inputs(engine.vocab_size, length)
    engine.generate([ids[:64]], [glob[:64]], max_new_tokens=2)  # warm-up, short
    out = {"loaded_peak_mib": _peak_mib()}
    for name in ("first", "second"):
        start = time.perf_counter()
        engine.generate([ids], [glob], max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        out[f"{name}_s"] = time.perf_counter() - start
        out[f"{name}_peak_mib"] = _peak_mib()
    engine.stop()
    return out


def _transformers_side(checkpoint: str, length: int, new_tokens: int, device: str) -> dict:
    from ledserve.benchmarks.measure import Baseline

    machine.best_torch_threads()  # run with BEST_TORCH_ENV (measure)
    baseline = Baseline(checkpoint, device, "fp32")
    ids, glob = _inputs(baseline.model.config.vocab_size, length)
    baseline.generate(ids[:64], glob[:64], 2, 1)  # warm-up, short
    out = {"loaded_peak_mib": _peak_mib()}
    for name in ("first", "second"):
        out[f"{name}_s"] = baseline.generate(ids, glob, new_tokens, 1).seconds
        out[f"{name}_peak_mib"] = _peak_mib()
    return out


def _child(args) -> int:
    side = _engine_side if args.side == "engine" else _transformers_side
    source = args.artifacts if args.side == "engine" else args.checkpoint
    result = side(source, args.length, args.new_tokens, args.device)
    print(json.dumps({"side": args.side, "length": args.length, **result}))
    return 0


def measure(artifacts, checkpoint, lengths, new_tokens: int, sides, device: str = "cpu"):
    """One child process per (side, length); yields their JSON results."""
    for length in lengths:
        for side in sides:
            env = machine.BEST_TORCH_ENV if side == "transformers" else {}
            args = ["--child", side, "--length", str(length), "--new-tokens", str(new_tokens),
                    "--device", device, "--artifacts", str(artifacts),
                    "--checkpoint", str(checkpoint)]  # fmt: skip
            result = machine.run_child("ledserve.benchmarks.memory", args, env)
            yield {"side": side, "length": length, **result}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--checkpoint", default="", help="the checkpoint the artifacts came from")
    parser.add_argument("--lengths", default="4096,8192,16384")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--sides", default="engine,transformers")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--child", choices=("engine", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.side = args.child
        return _child(args)
    sides = args.sides.split(",")
    if "transformers" in sides and not args.checkpoint:
        parser.error("--checkpoint is needed for the transformers side")
    lengths = [int(x) for x in args.lengths.split(",")]
    for result in measure(args.artifacts, args.checkpoint, lengths, args.new_tokens, sides,
                          args.device):  # fmt: skip
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
