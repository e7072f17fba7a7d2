"""Side-by-side measurements on the same inputs: transformers `generate` (the baseline), the
engine in-process, and the engine behind the gRPC server with concurrent streaming clients.
Both sides generate exactly `new_tokens` tokens (EOS suppressed with min_new_tokens); one
warm-up run is excluded and medians of repeats are reported."""

import contextlib
import json
import statistics
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch


def make_input(vocab: int, length: int, seed: int, globals_: int = 16):
    """Random ids (<s> ... </s>) with global attention on the first tokens, like a question."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, length)
    ids[0], ids[-1] = 0, 2
    return ids.tolist(), [int(i < min(globals_, length)) for i in range(length)]


@dataclass
class Trace:
    seconds: float  # end to end
    step_times: list[float] = field(default_factory=list)  # since start, per decoding step
    tokens: list[int] = field(default_factory=list)


def report(summary: dict, out: str | None):
    """Print a rounds benchmark's summary without its rounds (printed as they ran); write it all
    to `out` (JSON) when given."""
    print(json.dumps({k: v for k, v in summary.items() if k != "rounds"}))
    if out:
        with open(out, "w") as f:
            json.dump(summary, f, indent=1)


def median_of(repeats: int, run, *args):
    """(median seconds, traces) of `run(*args) -> Trace`, after one warm-up run."""
    run(*args)
    traces = [run(*args) for _ in range(repeats)]
    return statistics.median(t.seconds for t in traces), traces


def inter_token(traces: list[Trace]) -> dict | None:
    """Percentiles of the gaps between consecutive decoding steps (greedy: between tokens): the
    decode step, unaffected by how long the encoder took."""
    gaps = [b - a for t in traces for a, b in zip(t.step_times, t.step_times[1:], strict=False)]
    if not gaps:
        return None
    return {"p50_s": float(np.percentile(gaps, 50)), "p95_s": float(np.percentile(gaps, 95))}


class _StepStamps:
    """A transformers logits processor that changes nothing and records when each decoding
    step's scores arrive (once per step, greedy or beam search)."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


class Baseline:
    """transformers' LED on `device` in `dtype`: what a user runs today. int8 (CPU): PyTorch's
    dynamic quantization of every `nn.Linear` (int8 weights, one scale per tensor, activations
    quantized per call), the int8 counterpart a PyTorch user has at hand, to set beside the
    engine's int8 artifacts (export/int8.py: signed int8 MatMul weights, one scale each)."""

    def __init__(self, checkpoint, device: str, dtype: str):
        from transformers import LEDForConditionalGeneration

        if dtype == "int8" and device != "cpu":
            raise ValueError("the int8 baseline is PyTorch's CPU dynamic quantization: cpu only")
        torch_dtype = torch.float16 if dtype == "fp16" else torch.float32
        self.device = torch.device(device)
        self.model = LEDForConditionalGeneration.from_pretrained(checkpoint, dtype=torch_dtype)
        self.model = self.model.to(self.device).eval()
        if dtype == "int8":
            with warnings.catch_warnings():  # torch.ao.quantization's notice that it moves
                warnings.simplefilter("ignore")
                self.model = torch.ao.quantization.quantize_dynamic(
                    self.model, {torch.nn.Linear}, dtype=torch.qint8
                )

    def _tensors(self, ids, glob):
        t = torch.tensor([ids], device=self.device)
        return t, torch.ones_like(t), torch.tensor([glob], device=self.device)

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def encode(self, ids, glob) -> Trace:
        ids_t, mask, glob_t = self._tensors(ids, glob)
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.get_encoder()(
                input_ids=ids_t, attention_mask=mask, global_attention_mask=glob_t
            )
        self._sync()
        return Trace(time.perf_counter() - start)

    def generate(self, ids, glob, new_tokens: int, beams: int) -> Trace:
        from transformers import LogitsProcessorList

        ids_t, mask, glob_t = self._tensors(ids, glob)
        stamps = _StepStamps()
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids_t, attention_mask=mask, global_attention_mask=glob_t,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams,
                do_sample=False, logits_processor=LogitsProcessorList([stamps]),
            )  # fmt: skip
        self._sync()
        seconds = time.perf_counter() - start
        return Trace(seconds, [t - start for t in stamps.times], out[0].tolist())


def holds_int8(folders) -> bool:
    """Whether any of these artifacts folders holds int8 graphs: a benchmark then sets PyTorch's
    int8 (`Baseline(..., "int8")`) beside transformers' fp32 by default."""
    from ledserve.manifest import Manifest

    return any(Manifest.read(folder).dtype == "int8" for folder in folders)


class InProcess:
    """The engine, driven in this thread (no loop thread, no server)."""

    def __init__(self, artifacts, device: str, profile: str | None = None):
        from ledserve.engine.artifacts import Artifacts
        from ledserve.engine.engine import Engine, EngineConfig
        from ledserve.engine.runtime import Runtime

        runtime = Runtime(Artifacts.load(artifacts, verify=False), device, profile=profile)
        self.engine = Engine(runtime, EngineConfig(max_rows=256))

    def encode(self, ids, glob) -> Trace:
        a = np.asarray([ids])
        start = time.perf_counter()
        self.engine.runtime.encode(a, np.ones_like(a), np.asarray([glob]))
        return Trace(time.perf_counter() - start)

    def generate(self, ids, glob, new_tokens: int, beams: int) -> Trace:
        engine, times = self.engine, []
        step = engine.step

        def stamped() -> bool:  # the end of each step that ran the decoder
            ran = step()
            if ran:
                times.append(time.perf_counter() - start)
            return ran

        engine.step = stamped
        start = time.perf_counter()
        try:
            request = engine.submit(
                ids, glob, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams
            )
            event = engine.next_event(request)
            while not event.finished:
                event = engine.next_event(request)
        finally:
            del engine.step
        if event.error:
            raise RuntimeError(event.error)
        return Trace(time.perf_counter() - start, times, event.results[0])


def decode_profile(side: InProcess, ids, glob, new_tokens: int) -> dict:
    """ONNX Runtime's profile of the decoder over one greedy generation, per step: the share of
    each operator type, and the run time inside ONNX Runtime."""
    side.generate(ids, glob, new_tokens, 1)
    path = side.engine.runtime.decoder.end_profiling()
    with open(path) as f:
        events = json.load(f)
    runs = [e["dur"] for e in events if e.get("name") == "model_run"]
    ops = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            ops[e["args"]["op_name"]] += e["dur"]
    steps = max(len(runs), 1)
    total = sum(ops.values()) or 1
    return {
        "trace": path,
        "steps": len(runs),
        "ort_run_ms_per_step": statistics.median(runs) / 1e3 if runs else None,
        "ops_ms_per_step": {
            op: {"ms": dur / steps / 1e3, "share": dur / total} for op, dur in ops.most_common(10)
        },
    }


def serve_throughput(
    artifacts, device: str, vocab: int, length: int, new_tokens: int, beams: int,
    concurrency: list[int], per_client: int, direct: bool = False, **engine_options,
) -> list[dict]:  # fmt: skip
    """The engine behind a real gRPC server on a loopback port; `c` clients each stream
    `per_client` requests back to back (pre-tokenized inputs of `length` tokens). `direct`: the
    same clients submit to the engine in this process instead (no gRPC, no server): the
    difference is the server's own cost."""
    from ledserve.engine.engine import Engine, EngineConfig
    from ledserve.server.app import BackgroundServer, ServerConfig
    from ledserve.server.client import Client

    most = max(concurrency)
    config = EngineConfig(
        max_rows=most * beams,
        max_queue=4 * most,
        max_encoder_tokens=most * length,
        **engine_options,
    )
    if direct:  # loaded and warmed up as the server does it
        engine = Engine.from_artifacts(artifacts, device, False, **vars(config))
        engine.start()
        stop = engine.stop
        engine.answer("warm up?", "warm up.", max_new_tokens=1)
    else:
        server = BackgroundServer(
            ServerConfig(artifacts=artifacts, port=0, device=device, engine=config,
                         verify_artifacts=False)
        )  # fmt: skip
        engine, target, stop = server.engine, f"127.0.0.1:{server.port}", server.stop
    params = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams)

    def streamed(worker, k, client) -> tuple[float, float, int]:
        """(first token s, total s, tokens) of one request."""
        ids, glob = make_input(vocab, length, seed=1000 * worker + k)
        start, first = time.perf_counter(), None
        if direct:
            request = engine.submit(ids, glob, **params)
            while not (event := request.events.get()).finished:
                if first is None and event.tokens:
                    first = time.perf_counter() - start
            tokens = len(event.results[0]) - 1
        else:
            for chunk in client.stream(input_ids=ids, global_attention_mask=glob, **params):
                if first is None and chunk.token_ids:
                    first = time.perf_counter() - start
            tokens = chunk.summary.usage.generated_tokens
        return first, time.perf_counter() - start, tokens

    results = []
    try:
        for c in concurrency:
            barrier = threading.Barrier(c)

            def client(worker, barrier=barrier):
                with contextlib.nullcontext() if direct else Client(target) as cl:
                    barrier.wait()
                    return [streamed(worker, k, cl) for k in range(per_client)]

            steps = engine.steps
            start = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                done = [r for rs in pool.map(client, range(c)) for r in rs]
            wall = time.perf_counter() - start
            results.append({
                "concurrency": c,
                "requests": len(done),
                "tokens": sum(r[2] for r in done),
                "wall_s": wall,
                "tokens_per_s": sum(r[2] for r in done) / wall,
                "requests_per_s": len(done) / wall,
                "latency_p50_s": float(np.percentile([r[1] for r in done], 50)),
                "latency_p95_s": float(np.percentile([r[1] for r in done], 95)),
                "first_token_p50_s": float(np.percentile([r[0] for r in done], 50)),
                "decoder_steps": engine.steps - steps,
            })  # fmt: skip
    finally:
        stop()
    return results
