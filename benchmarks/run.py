"""`ledserve bench` / `python -m ledserve.benchmarks`: prepare the model (a checkpoint path, or a
random LED with the LED-base shape exported by our own exporter), measure everything side by side,
and write results.json, results.md and the plots."""

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ledserve.benchmarks import floors, loop, machine, measure, overlap
from ledserve.benchmarks.report import markdown, plots
from ledserve.manifest import Manifest, ManifestError

FULL = dict(
    lengths=[512, 1024, 2048, 4096, 8192, 16384],
    new_tokens=32,
    repeats=3,
    concurrency=[1, 4, 8, 16, 64],
    serve_length=1024,
    per_client=2,
    profile_length=2048,
    overlap_length=4096,
    loop_rows=64,
)
QUICK = dict(lengths=[512, 1024], new_tokens=8, repeats=2, concurrency=[1, 4, 8],
             serve_length=256, per_client=1, profile_length=512, overlap_length=512,
             loop_rows=8)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--checkpoint",
        help="an LED checkpoint (hub id or folder); default: a "
        "random-weight LED with the LED-base shape, built in --workdir",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("bench-work"),
        help="checkpoint and artifacts (reused when present)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtypes",
        default=None,
        help="engine dtypes, of fp32, fp16, int8 (default: fp32 on cpu, fp32,fp16 on cuda); "
        "the baseline runs fp32, fp16 on cuda, and with int8 on cpu PyTorch's dynamic int8 "
        "quantization",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: minutes on a 2-core CPU")
    parser.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--new-tokens", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--serve-length", type=int)
    parser.add_argument("--serve-beams", default="1", help="beam sizes of the concurrency sweep")
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--overlap-length", type=int,
                        help="tokens of each of the 8 inputs encoded beside a stream")  # fmt: skip
    parser.add_argument("--skip-overlap", action="store_true",
                        help="skip the stream-while-encoding scenario")  # fmt: skip
    parser.add_argument("--loop-rows", type=int,
                        help="greedy requests of the loop-cost scenario (default 64)")  # fmt: skip
    parser.add_argument("--skip-loop", action="store_true",
                        help="skip the loop-cost scenario (the engine against bare ONNX Runtime "
                        "calls)")  # fmt: skip
    parser.add_argument("--from-json", type=Path, help="only re-render the tables and plots of an "
                        "earlier results.json into --out")  # fmt: skip


def _say(message: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare(args) -> tuple[str, dict[str, Path]]:
    """(checkpoint, dtype -> artifacts folder), exporting what is missing."""
    from ledserve.demo.tiny import BASE, build_random_led
    from ledserve.export.convert import ExportConfig, export_model

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = args.workdir / "led-base-random"
        if not (checkpoint / "config.json").exists():
            _say(f"building a random LED with the LED-base shape in {checkpoint}")
            build_random_led(checkpoint, weight_std=0.02, **BASE)
    folders = {}
    for dtype in args.dtypes:
        folder = args.workdir / f"artifacts-{dtype}"
        try:
            Manifest.read(folder)  # reused when this ledserve reads it
        except ManifestError as e:
            _say(f"exporting {dtype} to {folder} ({e})")
            export_model(ExportConfig(model=str(checkpoint), output=folder, dtype=dtype,
                                      validate=True, force=True))  # fmt: skip
        folders[dtype] = folder
    return str(checkpoint), folders


def run(args) -> dict:
    sizes = {**(QUICK if args.quick else FULL)}
    for key in FULL.keys() - {"per_client", "profile_length"}:  # those the flags can override
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    if sizes["new_tokens"] < 2:
        raise SystemExit(
            "error: --new-tokens must be >= 2 (the step time is measured between tokens)"
        )
    args.dtypes = (args.dtypes or ("fp32,fp16" if args.device == "cuda" else "fp32")).split(",")
    checkpoint, folders = prepare(args)
    manifest = Manifest.read(folders[args.dtypes[0]])
    config = json.loads((folders[args.dtypes[0]] / "config.json").read_text())
    model = {
        **asdict(manifest.model),
        **{k: config[k] for k in ("encoder_ffn_dim", "decoder_ffn_dim")},
    }
    vocab, n = model["vocab_size"], sizes["new_tokens"]
    window = max(model["attention_window"])  # transformers pads the input to a window multiple
    lengths = [x for x in sizes["lengths"] if x + (-x % window) <= model["max_encoder_positions"]]
    if not lengths:
        raise SystemExit(f"error: no length of {sizes['lengths']} fits the model")

    _say("measuring the machine's matmul rate and copy bandwidth")
    rates = {"fp32": machine.measure_rates(args.device)}
    if args.device == "cuda":
        import torch

        rates["fp16"] = machine.measure_rates(args.device, torch.float16)
    results = {"machine": machine.describe(args.device), "rates": rates, "sizes": sizes,
               "checkpoint": checkpoint, "model": model, "sides": {}}  # fmt: skip

    baseline_dtypes = ["fp32", "fp16"] if args.device == "cuda" else ["fp32"]
    if "int8" in args.dtypes and args.device == "cpu":
        baseline_dtypes.append("int8")  # the same precision beside the engine's int8
    sides = [(f"transformers-{d}", d) for d in baseline_dtypes]
    sides += [(f"engine-{d}", d) for d in args.dtypes]
    tokens = {}
    for name, dtype in sides:
        _say(f"{name}: loading")
        with machine.PeakMemory(args.device) as memory:
            if name.startswith("transformers"):
                side = measure.Baseline(checkpoint, args.device, dtype)
            else:
                side = measure.InProcess(folders[dtype], args.device)
            out = measure_side(name, side, vocab, lengths, sizes, args.skip_server, tokens,
                               longest_first=args.device == "cuda")  # fmt: skip
            del side
        out["memory"] = memory.result()
        results["sides"][name] = out
    results["identical_tokens"] = {
        f"beams{b}": tokens[("engine-fp32", b)] == tokens[("transformers-fp32", b)]
        for b in (1, 4) if ("engine-fp32", b) in tokens
    }  # fmt: skip
    results["same_precision_tokens_equal"] = {  # two approximations of fp32: reported, not required
        d: {f"beams{b}": tokens[(f"engine-{d}", b)] == tokens[(f"transformers-{d}", b)]
            for b in (1, 4) if (f"engine-{d}", b) in tokens}
        for d in baseline_dtypes[1:]
    }  # fmt: skip

    _attach_floors(results, folders)
    profile_length = min(sizes["profile_length"], lengths[-1])
    _say(f"profiling the decoder ({profile_length}-token input, {n} greedy steps)")
    args.out.mkdir(parents=True, exist_ok=True)
    side = measure.InProcess(folders[args.dtypes[0]], args.device, profile=str(args.out / "ort"))
    ids, glob = measure.make_input(vocab, profile_length, seed=1)
    results["decode_profile"] = measure.decode_profile(side, ids, glob, n)
    results["decode_profile"]["input_tokens"] = profile_length
    del side

    if not args.skip_server:
        results["serving"] = {}
        for beams in [int(b) for b in args.serve_beams.split(",")]:
            _say(f"gRPC server: concurrency {sizes['concurrency']}, {beams} beam(s)")
            results["serving"][f"beams{beams}"] = measure.serve_throughput(
                folders[args.dtypes[0]], args.device, vocab, sizes["serve_length"], n, beams,
                sizes["concurrency"], sizes["per_client"],
            )  # fmt: skip
    if not args.skip_loop:
        rows = sizes["loop_rows"]
        _say(f"the loop's cost: {rows} greedy requests of 256 tokens, {n} tokens each")
        results["loop"] = loop.measure(folders[args.dtypes[0]], args.device, rows=rows,
                                       input_tokens=256, new_tokens=n, steps=min(n, 30),
                                       repeats=sizes["repeats"])  # fmt: skip
    if not args.skip_overlap:
        length = min(sizes["overlap_length"], model["max_encoder_positions"])
        _say(f"a greedy stream while 8 inputs of {length} tokens are encoded")
        runs = [overlap.measure(folders[args.dtypes[0]], args.device, length)
                for _ in range(sizes["repeats"])]  # fmt: skip
        results["overlap"] = sorted(runs, key=lambda o: o["kept"])[len(runs) // 2]  # the median
        results["overlap"]["kept_all_runs"] = [o["kept"] for o in runs]
    return results


def measure_side(name, side, vocab, lengths, sizes, skip_server, tokens,
                 longest_first: bool = False) -> dict:  # fmt: skip
    """Encoder latency by length; generation (greedy and beam 4) at 2048 tokens (or the longest
    length); for the baseline, its one-at-a-time rate at the serving length. `longest_first`:
    also the first token of a greedy request at the longest length (the GPU target's 16k)."""
    n, repeats = sizes["new_tokens"], sizes["repeats"]
    out = {"encoder": {}, "generate": {}}
    for length in lengths:
        _say(f"{name}: encoder at {length} tokens")
        ids, glob = measure.make_input(vocab, length, seed=length)
        out["encoder"][length] = measure.median_of(repeats, side.encode, ids, glob)[0]
    length = 2048 if 2048 in lengths else lengths[-1]
    ids, glob = measure.make_input(vocab, length, seed=length)
    for beams in (1, 4):
        _say(f"{name}: generate {n} tokens, {beams} beam(s), {length}-token input")
        e2e, traces = measure.median_of(repeats, side.generate, ids, glob, n, beams)
        first, _ = measure.median_of(repeats, side.generate, ids, glob, 1, beams)
        tokens[(name, beams)] = traces[-1].tokens
        # The step: the median gap between steps, not (e2e - first) / (n - 1), two medians of
        # runs that each hold an encoder pass, whose spread swamped the step.
        steps = measure.inter_token(traces)
        out["generate"][f"beams{beams}"] = {
            "input_tokens": length, "new_tokens": n, "end_to_end_s": e2e, "first_token_s": first,
            "step_s": steps["p50_s"], "inter_token": steps,
        }  # fmt: skip
    if longest_first:
        _say(f"{name}: first token at {lengths[-1]} tokens")
        ids, glob = measure.make_input(vocab, lengths[-1], seed=lengths[-1])
        first, _ = measure.median_of(repeats, side.generate, ids, glob, 1, 1)
        out["first_token_longest"] = {"input_tokens": lengths[-1], "seconds": first}
    if name.startswith("transformers") and not skip_server:
        ids, glob = measure.make_input(vocab, sizes["serve_length"], seed=7)
        e2e, _ = measure.median_of(repeats, side.generate, ids, glob, n, 1)
        out["one_at_a_time_tokens_per_s"] = n / e2e
    return out


def _attach_floors(results: dict, folders: dict):
    """Floors next to every encoder and decode-step time, per dtype of the weights."""
    model, n = results["model"], results["sizes"]["new_tokens"]
    for name, out in results["sides"].items():
        dtype = name.rsplit("-", 1)[1]
        rates = results["rates"].get(dtype, results["rates"]["fp32"])
        size = 2 if dtype == "fp16" else 4
        source = dtype if dtype in folders else next(iter(folders))  # graphs of another dtype:
        scale = size / (2 if source == "fp16" else 4)  # their weights rescaled to this one's
        weights = {g: (folders[source] / f"{g}.onnx").stat().st_size * scale for g in
                   ("encoder", "decoder")}  # fmt: skip
        out["encoder_floor"] = {
            length: floors.floor_seconds(floors.encoder_work(model, int(length),
                                         int(weights["encoder"]), size), rates)
            for length in out["encoder"]
        }  # fmt: skip
        for key, gen in out["generate"].items():
            beams = int(key.removeprefix("beams"))
            work = floors.decode_step_work(model, beams, 1, gen["input_tokens"], n // 2,
                                           int(weights["decoder"]), size)  # fmt: skip
            gen["step_floor"] = floors.floor_seconds(work, rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ledserve.benchmarks", description=__doc__)
    add_arguments(parser)
    return bench(parser.parse_args(argv))


def bench(args) -> int:
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        args.out.mkdir(parents=True, exist_ok=True)
    else:
        results = run(args)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = markdown(results)
    (args.out / "results.md").write_text(table)
    written = plots(results, args.out)
    print(table)
    _say(f"wrote {args.out / 'results.json'}, results.md" + "".join(f", {p.name}" for p in written))
    return 0
