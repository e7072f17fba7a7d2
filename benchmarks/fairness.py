"""A small request's first-token latency beside a greedy neighbour, through the gRPC server.

Client "bob" sends small requests one after another (a short question and context) and times
each one's first token: alone, then while client "alice" holds `--heavy` max-size requests
(`--beams` beams, the model's longest input, the longest answer). Both authenticate with tokens,
so the server tells them apart. Run once with the per-client row share that `ledserve serve`
uses by default (half of max_rows) and once without it (one client may take every row).

    python -m ledserve.benchmarks.fairness [--artifacts DIR] [--runs 10]
"""

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np

TOKENS = {"alice-0123456789abcdef": "alice", "bob-0123456789abcdef0": "bob"}


def _first_token_seconds(client) -> float:
    start = time.perf_counter()
    call = client.stream("what is the capital?", "The capital is Paris.", max_new_tokens=8)
    for chunk in call:
        if chunk.token_ids:
            break
    elapsed = time.perf_counter() - start
    call.cancel()
    return elapsed


def _percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"p50_s": statistics.median(ordered), "p95_s": ordered[int(0.95 * (len(ordered) - 1))]}


def _keep_busy(client, stop: threading.Event, **request):
    """Send the heavy request again and again until `stop`: the neighbour never lets go."""
    while not stop.is_set():
        call = client.stream(**request)
        try:
            for _ in call:
                if stop.is_set():
                    call.cancel()
        except Exception:  # cancelled when the measurement ends
            pass


def measure(artifacts, runs: int, heavy: int, beams: int, client_rows: int | None,
            device: str = "cpu") -> dict:  # fmt: skip
    from ledserve.engine.engine import EngineConfig
    from ledserve.server.app import BackgroundServer, ServerConfig
    from ledserve.server.client import Client

    engine_config = EngineConfig(max_client_rows=client_rows)
    config = ServerConfig(artifacts=artifacts, port=0, device=device, auth_tokens=TOKENS,
                          engine=engine_config)  # fmt: skip
    server = BackgroundServer(config)
    target, (alice_token, bob_token) = f"127.0.0.1:{server.port}", list(TOKENS)
    try:
        with Client(target, token=bob_token) as bob:
            _first_token_seconds(bob)  # warm-up
            alone = [_first_token_seconds(bob) for _ in range(runs)]
            engine = server.engine
            rng = np.random.default_rng(0)
            longest = engine.max_new_tokens
            alices = [Client(target, token=alice_token) for _ in range(heavy)]
            stop, threads = threading.Event(), []
            for alice in alices:
                ids = rng.integers(5, engine.vocab_size, engine.max_input).tolist()
                heavy_request = dict(input_ids=ids, num_beams=beams, max_new_tokens=longest,
                                     min_new_tokens=longest)  # fmt: skip
                threads.append(threading.Thread(target=_keep_busy, args=(alice, stop),
                                                kwargs=heavy_request, daemon=True))  # fmt: skip
            for t in threads:
                t.start()
            deadline = time.monotonic() + 300
            while sum(r.rows for r in engine.running) < min(heavy * beams, client_rows or 64):
                if time.monotonic() > deadline:
                    raise TimeoutError("alice's requests did not start")
                time.sleep(0.05)
            loaded, held = [], []
            for _ in range(runs):
                held.append(sum(r.rows for r in engine.running if r.client == "token:alice"))
                loaded.append(_first_token_seconds(bob))
            stop.set()
            for t in threads:
                t.join()
            for alice in alices:
                alice.close()
    finally:
        server.stop()
    a, b = _percentiles(alone), _percentiles(loaded)
    return {
        "max_client_rows": client_rows, "alice_rows_held_min": min(held), "alone": a,
        "beside_alice": b, "p50_ratio": b["p50_s"] / a["p50_s"],
        "p95_ratio": b["p95_s"] / a["p95_s"],
    }  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.fairness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--artifacts", type=Path, help="default: the embedded demo model")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--heavy", type=int, default=8)
    parser.add_argument("--beams", type=int, default=8)
    args = parser.parse_args(argv)
    artifacts = args.artifacts
    if artifacts is None:
        from ledserve.demo.model import default_artifacts

        artifacts = default_artifacts()
    results = [
        measure(artifacts, args.runs, args.heavy, args.beams, rows, args.device)
        for rows in (32, None)  # ledserve serve's default share of 64 rows; no share
    ]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
