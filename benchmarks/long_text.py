"""The cost of a huge document: a 100 KB and a 15 MB document (the same text repeated) sent to
the server as one question's context, alternating, answered with `--new-tokens` tokens; the wall
time of each, medians of `--repeats`, and the server process's RSS growth.

    python -m ledserve.benchmarks.long_text [--artifacts DIR] [--repeats 3]
"""

import argparse
import json
import resource
import statistics
import time
from pathlib import Path


def measure(artifacts, repeats: int, new_tokens: int, sizes=(100_000, 15_000_000)) -> dict:
    from ledserve.demo.tiny import corpus
    from ledserve.server.app import BackgroundServer, ServerConfig
    from ledserve.server.client import Client

    text = " ".join(corpus(400, seed=3))
    documents = {size: (text * (size // len(text) + 1))[:size] for size in sizes}
    server = BackgroundServer(ServerConfig(artifacts=artifacts, port=0, device="cpu",
                                           max_message_bytes=64 << 20))  # fmt: skip
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, usage = {size: [] for size in sizes}, {}
    try:
        with Client(f"127.0.0.1:{server.port}", max_message_bytes=64 << 20) as client:
            client.generate("what is the first value?", text, max_new_tokens=2)  # warm-up
            for _ in range(repeats):
                for size, document in documents.items():
                    start = time.perf_counter()
                    reply = client.generate(
                        "what is the first value?",
                        document,
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                    )
                    seconds[size].append(time.perf_counter() - start)
                    u = reply.summary.usage
                    usage[size] = {
                        "input_tokens": u.input_tokens,
                        "truncated_context_tokens": u.truncated_context_tokens,
                        "truncated_context_characters": u.truncated_context_characters,
                    }
    finally:
        server.stop()
    medians = {size: statistics.median(s) for size, s in seconds.items()}
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB
    small, large = sizes
    return {
        "seconds": seconds, "median_s": medians, "usage": usage,
        "large_over_small": medians[large] / medians[small],
        "peak_rss_growth_mib": growth / 1024,
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledserve.benchmarks.long_text",
                                     description=__doc__)  # fmt: skip
    parser.add_argument("--artifacts", type=Path, help="default: the embedded demo model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    artifacts = args.artifacts
    if artifacts is None:
        from ledserve.demo.model import default_artifacts

        artifacts = default_artifacts()
    print(json.dumps(measure(artifacts, args.repeats, args.new_tokens), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
