"""Memory after an unusually long input: the process's RSS before, after one long input, after a
short one that follows, and after a second long one, with ONNX Runtime's arena shrinkage after
long encoder runs (`--shrink-after N` padded tokens) or without it (`--shrink-after none`).

    python -m ledserve.benchmarks.arena --artifacts DIR [--long 8192] [--shrink-after none]
"""

import argparse
import json
import resource
import time

import numpy as np


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def measure(artifacts, long_tokens: int, shrink_after: int | None, device: str = "cpu") -> dict:
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(artifacts, device=device, verify=False,
                                   shrink_after_tokens=shrink_after)  # fmt: skip
    rng = np.random.default_rng(0)
    short = rng.integers(5, engine.vocab_size, 512).tolist()
    long = rng.integers(5, engine.vocab_size, long_tokens).tolist()
    out = {"shrink_after_tokens": shrink_after, "long_tokens": long_tokens}
    for _ in range(2):
        engine.generate([short], max_new_tokens=2)  # warm-up
    out["rss_before_mib"] = _rss_mib()
    for name, ids in (("long", long), ("short_after", short), ("second_long", long)):
        start = time.perf_counter()
        engine.generate([ids], max_new_tokens=2)
        out[f"{name}_s"] = time.perf_counter() - start
        out[f"rss_after_{name}_mib"] = _rss_mib()
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine.stop()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledserve.benchmarks.arena",
                                     description=__doc__)  # fmt: skip
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--long", type=int, default=8192)
    parser.add_argument("--shrink-after", default="none", help="padded tokens, or none")
    args = parser.parse_args(argv)
    shrink = None if args.shrink_after == "none" else int(args.shrink_after)
    print(json.dumps(measure(args.artifacts, args.long, shrink, args.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
