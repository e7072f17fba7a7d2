"""results.json -> markdown tables of ratios (with floors and the targets) and PNG plots."""

from pathlib import Path


def _ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.1f}"


def markdown(r: dict) -> str:
    m, sides = r["machine"], r["sides"]
    base, engine = sides["transformers-fp32"], sides["engine-fp32"]
    rates = r["rates"]["fp32"]
    lines = [
        f"Machine: {m['cpu']} ({m['cpu_count']} cores, {m['memory_gib']} GiB)"
        + (f", {' '.join(m['cpu_isa']) or 'no AVX2'}" if "cpu_isa" in m else "")
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; device {m['device']}; torch {m['torch']}, onnxruntime {m['onnxruntime']}"
        + f"; torch threads {m.get('torch_threads', '?')}, THP_MEM_ALLOC_ENABLE="
        + f"{m.get('thp_mem_alloc_enable', 'unset')}.",
        f"Measured in this run: fp32 matmul {rates['matmul_flops'] / 1e9:.0f} GFLOP/s, "
        f"copy {rates['copy_bytes_per_s'] / 1e9:.1f} GB/s. Times are medians of "
        f"{r['sizes']['repeats']} runs after a warm-up; ratios are transformers ÷ engine "
        "(> 1: the engine is faster); floor = max(FLOPs ÷ matmul rate, bytes ÷ bandwidth).",
        "",
        "Encoder pass (batch 1, 16 global tokens):",
        "",
        "| tokens | transformers ms | engine ms | speed-up | floor ms (bound) "
        "| transformers ÷ floor | engine ÷ floor |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for length, t in base["encoder"].items():
        e, floor = engine["encoder"][length], engine["encoder_floor"][length]
        lines.append(
            f"| {length} | {_ms(t)} | {_ms(e)} | {t / e:.2f}× | {_ms(floor['floor_s'])} "
            f"({floor['bound']}) | {t / floor['floor_s']:.1f} | {e / floor['floor_s']:.1f} |"
        )
    lines += [
        "",
        f"Generation ({r['sizes']['new_tokens']} tokens, EOS suppressed):",
        "",
        "| side | beams | input | first token ms (÷ floor) | step ms, p50 / p95 "
        "| end to end ms (÷ floor) | speed-up (e2e) | speed-up (step) | step floor ms (bound) "
        "| step ÷ floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, side in sides.items():
        for key, g in side["generate"].items():
            ref = base["generate"][key]
            p95 = _ms(g["inter_token"]["p95_s"]) if g["inter_token"] else "–"  # older results
            floor = g["step_floor"]
            first_floor, e2e_floor = generation_floors(side, g)
            lines.append(
                f"| {name} | {key.removeprefix('beams')} | {g['input_tokens']} "
                f"| {_ms(g['first_token_s'])} ({g['first_token_s'] / first_floor:.1f}) "
                f"| {_ms(g['step_s'])} / {p95} "
                f"| {_ms(g['end_to_end_s'])} ({g['end_to_end_s'] / e2e_floor:.1f}) "
                f"| {ref['end_to_end_s'] / g['end_to_end_s']:.2f}× "
                f"| {ref['step_s'] / g['step_s']:.2f}× | {_ms(floor['floor_s'])} "
                f"({floor['bound']}) | {g['step_s'] / floor['floor_s']:.2f} |"
            )
    lines += ["", "Tokens identical to transformers (fp32): "
              + ", ".join(f"{k}: {v}" for k, v in r["identical_tokens"].items()), ""]  # fmt: skip
    lines += same_precision(r)
    longest = {n: s["first_token_longest"] for n, s in sides.items() if "first_token_longest" in s}
    if longest:
        lines += ["First token of a greedy request at the longest length: " + "; ".join(
            f"{n} {_ms(f['seconds'])} ms ({f['input_tokens']} tokens)" for n, f in longest.items()
        ) + ".", ""]  # fmt: skip
    lines += ["Peak memory: " + "; ".join(
        f"{name} " + ", ".join(f"{k} {v}" for k, v in side["memory"].items())
        for name, side in sides.items()
    ), ""]  # fmt: skip
    if "serving" in r:
        one = base.get("one_at_a_time_tokens_per_s")
        lines += [
            f"Through the gRPC server ({r['sizes']['serve_length']}-token inputs, "
            f"{r['sizes']['new_tokens']} tokens each; baseline: transformers serving one request "
            f"at a time, {one:.1f} tokens/s):",
            "",
            "| beams | concurrency | requests | tokens/s | requests/s | latency p50 / p95 ms "
            "| first token p50 ms | decoder steps | × baseline |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, rows in r["serving"].items():
            for s in rows:
                lines.append(
                    f"| {key.removeprefix('beams')} | {s['concurrency']} | {s['requests']} "
                    f"| {s['tokens_per_s']:.1f} | {s['requests_per_s']:.2f} "
                    f"| {_ms(s['latency_p50_s'])} / {_ms(s['latency_p95_s'])} "
                    f"| {_ms(s['first_token_p50_s'])} | {s['decoder_steps']} "
                    f"| {s['tokens_per_s'] / one:.1f}× |"
                )
        lines.append("")
    if "overlap" in r:
        o = r["overlap"]
        itl = o["inter_token_while_encoding"]
        lines += [
            f"A greedy stream ({o['input_tokens']}-token input) while {o['load']['inputs']} inputs "
            f"of {o['load']['tokens']} tokens are submitted at once and encoded (engine loop "
            f"thread, in-process; the median of {len(o['kept_all_runs'])} runs by the share kept):",
            "",
            "| tokens/s alone | tokens/s while encoding | kept | inter-token p50 / p95 / max ms "
            "while encoding | encoding s | tokens in that window |",
            "| --- | --- | --- | --- | --- | --- |",
            f"| {o['tokens_per_s_alone']:.1f} | {o['tokens_per_s_while_encoding']:.1f} "
            f"| {o['kept']:.0%} | {_ms(itl['p50_s'])} / {_ms(itl['p95_s'])} / {_ms(itl['max_s'])} "
            f"| {o['encoding_s']:.2f} | {o['tokens_while_encoding']}"
            + (" (the stream ended first)" if o["stream_ended_first"] else "")
            + " |",
            "",
        ]
    if "loop" in r:
        lp = r["loop"]
        lines += [
            f"The decode loop's own cost ({lp['rows']} greedy requests of {lp['input_tokens']} "
            f"tokens, {lp['new_tokens']} tokens each, in-process): the engine's step beside "
            "ONNX Runtime's decoder run inside it, and the whole batch end to end beside bare "
            "ONNX Runtime calls making the same encoder and decoder runs (the faster of plain "
            "`session.run` and IO-bound calls):",
            "",
            "| step ms | ONNX Runtime run ms | step ÷ run | end to end s | bare ONNX Runtime s "
            "| engine ÷ bare | wall time, all ÷ one request |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| {_ms(lp['step_s'])} | {_ms(lp['ort_run_s'])} | {lp['step_over_run']:.2f} "
            f"| {lp['all_requests_s']:.2f} "
            f"| {min(lp['bare_ort_run_s'], lp['bare_ort_bound_s']):.2f} "
            f"| {lp['over_bare_ort']:.2f} | {lp['wall_ratio']:.1f} |",
            "",
        ]
    p = r["decode_profile"]
    lines += [
        f"Decoder profile (ONNX Runtime, {p['steps']} greedy steps, {p['input_tokens']}-token "
        f"input, profiling on): {p['ort_run_ms_per_step']:.2f} ms per decoder run inside ONNX "
        "Runtime (profiling adds overhead; the shares are what matters).",
        "",
        "| operator | ms per step | share of kernel time |",
        "| --- | --- | --- |",
    ]
    lines += [
        f"| {op} | {v['ms']:.2f} | {v['share']:.0%} |" for op, v in p["ops_ms_per_step"].items()
    ]
    lines += ["", *targets(r), ""]
    return "\n".join(lines)


def same_precision(r: dict) -> list[str]:
    """Each engine dtype other than fp32 against transformers in the same dtype (fp16 on CUDA,
    PyTorch's dynamic int8 on the CPU), where the run has that baseline: the speed-ups above
    are against fp32."""
    sides, lines = r["sides"], []
    for name, side in sides.items():
        dtype = name.removeprefix("engine-")
        base = sides.get(f"transformers-{dtype}")
        if not name.startswith("engine-") or dtype == "fp32" or base is None:
            continue
        parts = [
            f"{key.removeprefix('beams')} beam(s): end to end "
            f"{base['generate'][key]['end_to_end_s'] / g['end_to_end_s']:.2f}×, step "
            f"{base['generate'][key]['step_s'] / g['step_s']:.2f}×"
            for key, g in side["generate"].items()
        ]
        equal = r.get("same_precision_tokens_equal", {}).get(dtype, {})
        same = ", ".join(f"{k}: {v}" for k, v in equal.items())
        lines += [f"{name} against transformers-{dtype} (same precision): " + "; ".join(parts)
                  + (f"; tokens equal: {same}" if same else "") + ".", ""]  # fmt: skip
    return lines


def generation_floors(side: dict, g: dict) -> tuple[float, float]:
    """Floors of the first token (encoder + one step) and of the whole generation (encoder +
    new_tokens steps), from the encoder floor at the generation's input length."""
    encoder = {str(k): v for k, v in side["encoder_floor"].items()}[str(g["input_tokens"])]
    step = g["step_floor"]["floor_s"]
    return encoder["floor_s"] + step, encoder["floor_s"] + g["new_tokens"] * step


def targets(r: dict) -> list[str]:
    """The issue's targets with the measured ratio (reported, never tuned for)."""
    base, engine = r["sides"]["transformers-fp32"], r["sides"]["engine-fp32"]
    out = ["Targets (measured ratio; met?):", ""]
    streams = {s["concurrency"]: s for s in r.get("serving", {}).get("beams1", [])}

    def throughput(concurrency: int, times: float, label: str):
        """The streams-through-the-server target, where the sweep ran that concurrency."""
        if concurrency in streams:
            gain = streams[concurrency]["tokens_per_s"] / base["one_at_a_time_tokens_per_s"]
            out.append(f"- {label} ≥ {times:g}× transformers one at a time: {gain:.1f}×"
                       f" — {'met' if gain >= times else 'not met'}")  # fmt: skip

    if r["machine"]["device"] == "cpu":
        length = "2048" if "2048" in map(str, engine["encoder"]) else list(engine["encoder"])[-1]
        length = next(k for k in engine["encoder"] if str(k) == str(length))
        enc = engine["encoder"][length] / engine["encoder_floor"][length]["floor_s"]
        greedy, beam = engine["generate"]["beams1"], engine["generate"]["beams4"]
        step = greedy["step_s"] / greedy["step_floor"]["floor_s"]
        beam_speedup = base["generate"]["beams4"]["step_s"] / beam["step_s"]
        out += [
            f"- encoder ≤ 1.5× its compute floor ({length} tokens): {enc:.2f}× — "
            f"{'met' if enc <= 1.5 else 'not met'}",
            f"- batch-1 greedy step ≤ 1.3× its bandwidth floor: {step:.2f}× — "
            f"{'met' if step <= 1.3 else 'not met'}",
            f"- beam-4 step ≥ 4× faster than transformers: {beam_speedup:.2f}× — "
            f"{'met' if beam_speedup >= 4 else 'not met'}",
        ]
        throughput(8, 5, "throughput at 8 concurrent")
        if "loop" in r:
            over, rows = r["loop"]["over_bare_ort"], r["loop"]["rows"]
            verdict = "met" if over <= 1.3 else "not met"
            out.append(f"- {rows} greedy requests take ≤ 1.3× the time of bare ONNX Runtime "
                       f"calls: {over:.2f}× — {verdict}")  # fmt: skip
        if "overlap" in r:
            kept = r["overlap"]["kept"]
            out.append(f"- a running stream keeps ≥ 30 % of its token rate while 8 long inputs are "
                       f"encoded: {kept:.0%} — {'met' if kept >= 0.3 else 'not met'}")  # fmt: skip
    elif "engine-fp16" in r["sides"]:
        fp16 = r["sides"]["engine-fp16"]["generate"]["beams1"]["step_s"]
        gain = base["generate"]["beams1"]["step_s"] / fp16
        out.append(f"- GPU fp16 per-token latency ≥ 10× lower than PyTorch fp32 (batch 1): "
                   f"{gain:.1f}× — {'met' if gain >= 10 else 'not met'}")  # fmt: skip
        if "transformers-fp16" in r["sides"]:
            half = r["sides"]["transformers-fp16"]["generate"]["beams1"]["step_s"] / fp16
            out.append(f"- GPU fp16 per-token latency ≥ 4× lower than PyTorch fp16 (batch 1): "
                       f"{half:.1f}× — {'met' if half >= 4 else 'not met'}")  # fmt: skip
        first = r["sides"]["engine-fp16"].get("first_token_longest", {})
        if first.get("input_tokens") == 16384:
            seconds = first["seconds"]
            out.append(f"- 16k-token first token ≤ 50 ms (fp16, greedy): {seconds * 1e3:.1f} ms"
                       f" — {'met' if seconds <= 0.05 else 'not met'}")  # fmt: skip
        throughput(64, 20, "tokens/s at 64 streams")
    return out


def plots(r: dict, folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, side in r["sides"].items():
        lengths = [int(k) for k in side["encoder"]]
        ax.plot(lengths, [v * 1e3 for v in side["encoder"].values()], marker="o", label=name)
    floor = r["sides"]["engine-fp32"]["encoder_floor"]
    ax.plot([int(k) for k in floor], [v["floor_s"] * 1e3 for v in floor.values()], "k--",
            label="floor (fp32)")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="input tokens", ylabel="encoder ms",
           title="Encoder latency vs input length")  # fmt: skip
    ax.legend()
    written.append(folder / "latency_vs_length.png")
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    if "serving" in r:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, rows in r["serving"].items():
            ax.plot([s["concurrency"] for s in rows], [s["tokens_per_s"] for s in rows],
                    marker="o", label=f"engine via gRPC, {key}")  # fmt: skip
        one = r["sides"]["transformers-fp32"]["one_at_a_time_tokens_per_s"]
        ax.axhline(one, color="k", linestyle="--", label="transformers, one at a time")
        ax.set(xscale="log", xlabel="concurrent streams", ylabel="tokens/s",
               title="Throughput vs concurrency")  # fmt: skip
        ax.legend()
        written.append(folder / "throughput_vs_concurrency.png")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    return written
