"""The benchmark entry point runs end to end in --quick mode on a tiny model (no timing asserted:
benchmarks never run as tests)."""

import json

import pytest
import torch

from ledserve.benchmarks import (
    fast_path,
    loop,
    machine,
    measure,
    quality,
    report,
    serving,
    streams,
)
from ledserve.cli import main as ledserve
from ledserve.demo.tiny import build_random_led


def test_quick_benchmark_writes_results(tmp_path):
    build_random_led(tmp_path / "checkpoint", eos_bias=1.7)
    out = tmp_path / "out"
    args = ["bench", "--quick", "--checkpoint", str(tmp_path / "checkpoint"), "--workdir",
            str(tmp_path / "work"), "--out", str(out), "--lengths", "96,192",
            "--concurrency", "1,2", "--repeats", "1", "--serve-length", "64",
            "--overlap-length", "192"]  # fmt: skip
    assert ledserve(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["identical_tokens"] == {"beams1": True, "beams4": True}
    engine = results["sides"]["engine-fp32"]
    assert set(engine["encoder"]) == {"96", "192"} and engine["encoder_floor"]["96"]["floor_s"] > 0
    greedy = engine["generate"]["beams1"]
    assert (
        greedy["new_tokens"] == 8
        and greedy["inter_token"]["p95_s"] >= greedy["inter_token"]["p50_s"]
    )
    for side in results["sides"].values():  # the step: the median gap between steps, beams too
        for g in side["generate"].values():
            assert g["step_s"] == g["inter_token"]["p50_s"] > 0
    serving = results["serving"]["beams1"]
    assert [s["concurrency"] for s in serving] == [1, 2]
    assert all(s["tokens"] == 8 * s["requests"] for s in serving)
    assert results["decode_profile"]["steps"] >= 8 and results["decode_profile"]["ops_ms_per_step"]
    overlap = results["overlap"]
    assert overlap["load"] == {"inputs": 8, "tokens": 192} and overlap["tokens_per_s_alone"] > 0
    assert len(overlap["kept_all_runs"]) == 1
    loop = results["loop"]
    assert loop["rows"] == 8 and loop["new_tokens"] == 8 and loop["over_bare_ort"] > 0
    table = (out / "results.md").read_text()
    assert "Encoder pass" in table and "Targets" in table and "while encoding" in table
    assert "decode loop's own cost" in table and "bare ONNX Runtime calls:" in table
    assert (out / "latency_vs_length.png").stat().st_size > 0
    assert (out / "throughput_vs_concurrency.png").stat().st_size > 0


def test_machine_names_the_int8_instruction_sets(tmp_path):
    """Which int8 GEMM kernel ONNX Runtime can use is part of every benchmark's machine."""
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9R14\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni sha_ni\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu\n"
    )
    assert machine.cpuinfo(str(info)) == ("AMD EPYC 9R14", ["avx2", "avx512f", "avx512_vnni"])
    info.write_text("model name\t: Old\nflags\t\t: fpu sse2 avx\n")
    assert machine.cpuinfo(str(info)) == ("Old", [])
    assert set(machine.describe("cpu")["cpu_isa"]) <= set(machine.INT8_ISA)


def test_loop_cost_benchmark_runs(exported):
    """benchmarks/loop.py end to end on a tiny model (its figures are not asserted)."""
    result = loop.measure(exported["fp32"], rows=4, input_tokens=20, new_tokens=4, steps=3,
                          repeats=1)  # fmt: skip
    assert result["rows"] == 4 and result["step_s"] > 0 and result["ort_run_s"] > 0
    assert result["all_requests_s"] > 0 and result["one_request_s"] > 0
    assert result["bare_ort_run_s"] > 0 and result["bare_ort_bound_s"] > 0
    assert result["over_bare_ort"] > 0


def test_serving_benchmark_runs_both_sides(exported, tmp_path):
    """benchmarks/serving.py end to end: the same streams through the server and directly on
    the engine, each request with all its tokens (figures not asserted)."""
    vocab = json.loads((exported["fp32"] / "config.json").read_text())["vocab_size"]
    for direct in (False, True):
        run = measure.serve_throughput(exported["fp32"], "cpu", vocab, 20, 5, 1, [3], 2,
                                       direct=direct)[0]  # fmt: skip
        assert run["requests"] == 6 and run["tokens"] == 30 and run["decoder_steps"] >= 5
    out = tmp_path / "serving.json"
    args = ["--artifacts", str(exported["fp32"]), "--streams", "2", "--per-client", "1",
            "--length", "20", "--new-tokens", "4", "--rounds", "1", "--out", str(out)]  # fmt: skip
    assert serving.main(args) == 0
    result = json.loads(out.read_text())
    assert result["median_tokens_per_s"]["direct"] > 0 and result["median_server_over_direct"] > 0


def test_fast_path_rounds_pair_each_side_with_its_rounds_baseline():
    """--rounds: a side's ratio is taken against the baseline of its own round, never another's;
    a round whose side failed (no "generate") is left out, not counted as a ratio."""

    def side(name, round_, seconds):
        return {"side": name, "round": round_, "generate": {"end_to_end_s": seconds}}

    results = [side("transformers-best", 0, 12.0), side("engine-int8", 0, 4.0),
               side("transformers-best", 1, 18.0), side("engine-int8", 1, 9.0),
               side("transformers-best", 2, 10.0), {"side": "engine-int8", "round": 2,
                                                     "error": "killed"}]  # fmt: skip
    ratios = fast_path.round_ratios(results)
    assert ratios["reference"] == "transformers-best"
    assert ratios["sides"]["engine-int8"] == {"per_round": [3.0, 2.0], "median": 2.5}
    results += [side("transformers-int8", 0, 8.0), side("transformers-int8", 1, 6.0)]
    ratios = fast_path.round_ratios(results, "transformers-int8")
    assert ratios["sides"]["engine-int8"] == {"per_round": [2.0, 2.0 / 3.0], "median": 4.0 / 3.0}
    assert ratios["sides"]["transformers-best"]["per_round"] == [8.0 / 12.0, 6.0 / 18.0]


def test_int8_baseline_is_pytorchs_dynamic_quantization(checkpoint):
    """The same-precision baseline of int8 artifacts: every Linear of transformers' LED (the
    language-model head too) becomes PyTorch's dynamic int8 Linear, and it generates."""
    folder, _ = checkpoint
    side = measure.Baseline(folder, "cpu", "int8")
    modules = list(side.model.modules())
    assert not [m for m in modules if type(m) is torch.nn.Linear]
    assert isinstance(side.model.lm_head, torch.ao.nn.quantized.dynamic.Linear)
    vocab = side.model.config.vocab_size
    trace = side.generate(*measure.make_input(vocab, 40, seed=0), 5, 2)
    assert len(trace.tokens) == 6 and len(trace.step_times) == 5
    with pytest.raises(ValueError, match="cpu only"):
        measure.Baseline(folder, "cuda", "int8")


def test_streams_benchmark_sets_each_engine_against_each_baseline(checkpoint, exported, tmp_path):
    """benchmarks/streams.py with int8 artifacts: PyTorch's int8 joins the fp32 baseline by
    default, and every engine side gets a ratio to each, from the rounds' own rates (figures
    not asserted)."""
    assert measure.holds_int8([exported["fp32"], exported["int8"]])
    assert not measure.holds_int8([exported["fp32"], exported["fp16"]])
    out = tmp_path / "streams.json"
    args = ["--checkpoint", str(checkpoint[0]), "--artifacts", f"int8={exported['int8']}",
            "--streams", "2", "--per-client", "1", "--length", "20", "--new-tokens", "4",
            "--baseline-requests", "1", "--rounds", "1", "--out", str(out)]  # fmt: skip
    assert streams.main(args) == 0
    result = json.loads(out.read_text())
    (rates,) = result["rounds"]
    for base in ("transformers", "transformers-int8"):
        assert result["median_ratio_to"][base] == {"int8": rates["int8"] / rates[base]}
    with pytest.raises(SystemExit):
        streams.main([*args[:4], "--baselines", "fp16"])


def test_report_sets_each_dtype_beside_its_own_baseline():
    """results.md: an engine dtype other than fp32 is also set against transformers in that
    dtype, where the run has it (int8 on the CPU, fp16 on CUDA)."""

    def side(e2e, step):
        return {"generate": {"beams1": {"end_to_end_s": e2e, "step_s": step}}}

    results = {"sides": {"transformers-fp32": side(12.0, 0.04),
                         "transformers-int8": side(8.0, 0.03), "engine-fp32": side(6.0, 0.02),
                         "engine-int8": side(4.0, 0.012), "engine-fp16": side(5.0, 0.02)},
               "same_precision_tokens_equal": {"int8": {"beams1": False}}}  # fmt: skip
    lines = [x for x in report.same_precision(results) if x]
    assert lines == [
        "engine-int8 against transformers-int8 (same precision): 1 beam(s): end to end 2.00×, "
        "step 2.50×; tokens equal: beams1: False."
    ]


def test_quality_benchmark_sets_pytorch_beside_the_engine(tmp_path):
    """benchmarks/quality.py --torch: transformers fp32 on the demo model's held-out prompts
    gives the fp32 engine's answers token for token; PyTorch's int8 is scored the same way."""
    result = quality.measure(6, ["fp32"], tmp_path, torch_sides=True)["dtypes"]
    assert result["torch-fp32"]["token_agreement_with_fp32"] == 1.0
    assert result["torch-fp32"]["exact_match"] == result["fp32"]["exact_match"]
    assert 0.0 <= result["torch-int8"]["token_agreement_with_fp32"] <= 1.0


def test_gpu_targets_are_stated_from_their_own_measurements():
    """On CUDA, results.md states the GPU issue's targets: fp16 per-token latency against
    PyTorch fp32 and fp16, the 16k-token first token (measured, not summed) and 64 streams."""

    def side(step, **extra):
        return {"generate": {"beams1": {"end_to_end_s": 1.0, "step_s": step}}, **extra}

    results = {
        "machine": {"device": "cuda"},
        "sides": {
            "transformers-fp32": side(0.030, one_at_a_time_tokens_per_s=40.0),
            "transformers-fp16": side(0.020),
            "engine-fp32": side(0.004),
            "engine-fp16": side(0.0025, first_token_longest={"input_tokens": 16384,
                                                             "seconds": 0.062}),
        },
        "serving": {"beams1": [{"concurrency": 64, "tokens_per_s": 1000.0}]},
    }  # fmt: skip
    assert report.targets(results)[2:] == [
        "- GPU fp16 per-token latency ≥ 10× lower than PyTorch fp32 (batch 1): 12.0× — met",
        "- GPU fp16 per-token latency ≥ 4× lower than PyTorch fp16 (batch 1): 8.0× — met",
        "- 16k-token first token ≤ 50 ms (fp16, greedy): 62.0 ms — not met",
        "- tokens/s at 64 streams ≥ 20× transformers one at a time: 25.0× — met",
    ]


def test_bench_times_the_first_token_at_the_longest_length_on_request():
    """`ledserve bench --device cuda` also times a greedy request's first token at the longest
    length (the GPU issue's 16k target); a side that records its calls shows what ran."""
    from ledserve.benchmarks.run import measure_side

    calls = []

    class Side:
        def encode(self, ids, glob):
            return measure.Trace(0.001)

        def generate(self, ids, glob, new_tokens, beams):
            calls.append((len(ids), new_tokens, beams))
            return measure.Trace(0.01 * new_tokens, [0.005 * i for i in range(new_tokens)])

    sizes = {"new_tokens": 4, "repeats": 1, "serve_length": 8}
    out = measure_side("engine-fp16", Side(), 50, [16, 48], sizes, True, {}, longest_first=True)
    assert out["first_token_longest"] == {"input_tokens": 48, "seconds": 0.01}
    assert calls[-2:] == [(48, 1, 1), (48, 1, 1)]  # a warm-up, then the timed run
    assert "first_token_longest" not in measure_side("x", Side(), 50, [16, 48], sizes, True, {})


def test_fast_path_runs_pytorchs_int8_beside_int8_artifacts(checkpoint, exported, tmp_path):
    """benchmarks/fast_path.py end to end on a tiny model: with int8 artifacts and no
    --baselines, transformers runs in its default, its best and PyTorch's int8 configuration;
    each side in its own process (here int8 alone, to keep it short; figures not asserted)."""
    int8, fp32 = {"int8": exported["int8"]}, {"fp32": exported["fp32"]}
    assert fast_path.baselines_for(int8, None) == ["default", "best", "int8"]
    assert fast_path.baselines_for(fp32, None) == ["default", "best"]
    assert fast_path.baselines_for(int8, "best") == ["best"]
    out = tmp_path / "fast_path.json"
    args = ["--checkpoint", str(checkpoint[0]), "--artifacts", f"int8={exported['int8']}",
            "--baselines", "int8", "--lengths", "24", "--generate", "24:3", "--repeats", "1",
            "--out", str(out)]  # fmt: skip
    assert fast_path.main(args) == 0
    sides = json.loads(out.read_text())
    assert [(s["side"], s["dtype"]) for s in sides] == [("transformers-int8", "int8"),
                                                        ("engine-int8", "int8")]  # fmt: skip
    assert all(s["generate"]["new_tokens"] == 3 and s["encoder_s"]["24"] > 0 for s in sides)
