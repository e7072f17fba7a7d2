"""Step time with requests of different widths decoding together: `--greedy` greedy requests and
`--beams` beam-4 requests (256-token inputs) in one decode batch, the engine's step and the ONNX
Runtime time inside it, and the decoder runs per step.

    python -m ledserve.benchmarks.mixed --artifacts DIR [--greedy 48] [--beams 4] [--steps 20]
"""

import argparse
import json
import statistics

import numpy as np

from ledserve.benchmarks.loop import timed_steps


def measure(artifacts, greedy: int, beams: int, steps: int, device: str = "cpu") -> dict:
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(artifacts, device=device, verify=False, max_rows=128)
    rng = np.random.default_rng(0)
    n = steps + 8
    widths = [1] * greedy + [4] * beams
    requests = [
        engine.submit(list(rng.integers(5, engine.vocab_size, 256)), max_new_tokens=n,
                      min_new_tokens=n, num_beams=width)
        for width in widths
    ]  # fmt: skip
    times, runs, calls = timed_steps(engine, requests, steps)
    return {
        "greedy": greedy, "beams": beams, "step_ms": 1000 * statistics.median(times),
        "ort_ms": 1000 * statistics.median(runs),
        "decoder_runs_per_step": calls / steps,
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.mixed", description=__doc__
    )
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--greedy", type=int, default=48)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.artifacts, args.greedy, args.beams, args.steps, args.device)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
