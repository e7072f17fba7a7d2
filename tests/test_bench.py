"""The benchmark entry point runs end to end in --quick mode on a tiny model (no timing asserted:
benchmarks never run as tests)."""

import json

from ledserve.benchmarks import fast_path, loop, machine, measure, serving
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
