"""Extractive QA latency: ledserve's Extractor against transformers' question-answering pipeline on
the same weights (a random Longformer of longformer-base-4096's shape) and the same windows
(`max_seq_len` 4096, `doc_stride` 128), documents of `--lengths` tokens. Two child processes,
one per PyTorch configuration: the best (THP_MEM_ALLOC_ENABLE=1, threads = cores) and the
default; in each, the sides alternate run by run and medians are reported, with each side's
ratio to ledserve fp32 of the same process.

    python -m ledserve.benchmarks.extract --workdir DIR [--lengths 4096,16384] [--repeats 3]
        [--dtypes fp32,int8] [--out FILE]

The pipeline runs one window at a time by default (`batch_size` 1); with the best configuration
it is also run with `batch_size` 8 (its windows batched, padded like ours).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ledserve.benchmarks import machine

MODULE = "ledserve.benchmarks.extract"
QUESTION = "Which city did the report about the river mention first?"


def prepare(workdir: Path, dtypes: list[str]) -> dict:
    """The checkpoint and each dtype's artifacts, built once in `workdir`."""
    from ledserve.demo.tiny import BASE_QA, build_random_longformer_qa
    from ledserve.export.convert import ExportConfig, export_model

    checkpoint = workdir / "longformer-base-qa-random"
    if not (checkpoint / "config.json").is_file():
        build_random_longformer_qa(checkpoint, weight_std=0.02, **BASE_QA)
    folders = {}
    for dtype in dtypes:
        folders[dtype] = workdir / f"artifacts-{dtype}"
        if not (folders[dtype] / "manifest.json").is_file():
            export_model(ExportConfig(model=str(checkpoint), output=folders[dtype], dtype=dtype,
                                      force=True))  # fmt: skip
    return {"checkpoint": checkpoint, "artifacts": folders}


def document(tokenizer, tokens: int) -> str:
    """Filler text of `tokens` tokens."""
    from ledserve.demo.tiny import corpus

    text, lines = "", 64
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < tokens:
        lines *= 2
        text = " ".join(corpus(lines, seed=tokens))
    ids = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return text[: ids["offset_mapping"][tokens - 1][1]]


def side_by_side(workdir: Path, lengths: list[int], repeats: int, dtypes: list[str],
                 best: bool) -> dict:  # fmt: skip
    """In this process: every side on every length, alternating, `repeats` timed rounds after
    one warm-up round."""
    import torch
    from transformers import AutoTokenizer, LongformerForQuestionAnswering, pipeline
    from transformers.utils import logging as hf_logging

    from ledserve.engine.engine import Engine

    hf_logging.set_verbosity_error()
    machine.best_torch_threads()
    paths = prepare(workdir, dtypes)
    tokenizer = AutoTokenizer.from_pretrained(paths["checkpoint"])
    model = LongformerForQuestionAnswering.from_pretrained(paths["checkpoint"]).eval()
    qa = pipeline("question-answering", model=model, tokenizer=tokenizer)
    sides = {}
    for dtype, folder in paths["artifacts"].items():
        extractor = Engine.from_artifacts(folder, device="cpu")
        sides[f"ledserve-{dtype}"] = lambda d, e=extractor: e.extract(QUESTION, d, doc_stride=128)
    batches = (1, 8) if best else (1,)
    for size in batches:
        sides[f"pipeline-batch{size}"] = lambda d, s=size: qa(
            question=QUESTION, context=d, max_seq_len=4096, doc_stride=128, batch_size=s
        )
    out = {"machine": machine.describe("cpu"), "torch_config": "best" if best else "default",
           "lengths": {}}  # fmt: skip
    for length in lengths:
        text = document(tokenizer, length)
        runs = {name: [] for name in sides}
        answers = {}
        for r in range(repeats + 1):
            for name, run in sides.items():
                print(f"[extract] {length} tokens, round {r}, {name}", file=sys.stderr, flush=True)
                start = time.perf_counter()
                with torch.inference_mode():
                    answers[name] = run(text)
                if r:
                    runs[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in runs.items()}
        reference = medians[f"ledserve-{dtypes[0]}"]
        out["lengths"][length] = {
            "windows": len(tokenizer(QUESTION, text, truncation="only_second", max_length=4096,
                                     stride=128, return_overflowing_tokens=True)["input_ids"]),
            "median_s": medians,
            f"ratio_to_ledserve_{dtypes[0]}": {n: m / reference for n, m in medians.items()},
            "runs_s": runs,
            "same_span_as_pipeline": {
                n: _span(a) == _span(answers["pipeline-batch1"]) for n, a in answers.items()
            },
        }  # fmt: skip
    return out


def _span(answer: dict) -> tuple:
    return answer["answer"], answer["start"], answer["end"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.extract",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32", help="ledserve's artifacts, e.g. fp32,int8")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--child", choices=("best", "default"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    dtypes = args.dtypes.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        result = side_by_side(args.workdir, lengths, args.repeats, dtypes, args.child == "best")
        print(json.dumps(result))
        return 0
    prepare(args.workdir, dtypes)  # once, before the timed children
    own = ["--workdir", str(args.workdir), "--lengths", args.lengths, "--repeats",
           str(args.repeats), "--dtypes", args.dtypes]  # fmt: skip
    results = {}
    configs = (("best", machine.BEST_TORCH_ENV), ("default", {"THP_MEM_ALLOC_ENABLE": "0"}))
    for config, env in configs:
        results[config] = machine.run_child(MODULE, [*own, "--child", config], env)
    text = json.dumps(results, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
