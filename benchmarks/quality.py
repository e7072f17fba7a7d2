"""Answer quality of reduced-precision artifacts on the trained demo model: exact match of each
dtype's greedy answers on held-out generated documents, and the share of fp32's tokens each dtype
reproduces at the same position.

    python -m ledserve.benchmarks.quality [--examples 500] [--dtypes fp32,int8,fp16]
        [--workdir DIR] [--device cpu]

The held-out documents are those of the demo model's training report (seed HELD_OUT_SEED), never
seen in training. Prints one JSON object.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path


def _answers(folder, items, device: str) -> list[list[int]]:
    from ledserve.demo.train import MAX_NEW_TOKENS
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(folder, device=device, max_rows=256, max_queue=len(items))
    try:
        prompts = [engine.prompts.build(e.question, e.context) for e in items]
        return engine.generate(
            [p.input_ids for p in prompts], [p.global_attention_mask for p in prompts],
            max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False,
        )  # fmt: skip
    finally:
        engine.stop()


def token_agreement(rows: list[list[int]], reference: list[list[int]]) -> float:
    """Share of the reference's tokens equal at the same position (a longer or shorter answer
    counts its missing positions as different)."""
    pairs = zip(rows, reference, strict=True)
    same = sum(a == b for r, ref in pairs for a, b in zip(r, ref, strict=False))
    return same / sum(max(len(r), len(ref)) for r, ref in zip(rows, reference, strict=True))


def measure(examples: int, dtypes: list[str], workdir: Path, device: str = "cpu") -> dict:
    from transformers import AutoTokenizer

    from ledserve.demo.model import DEMO_MODEL
    from ledserve.demo.synthetic import examples as held_out
    from ledserve.demo.train import HELD_OUT_SEED, exact_match
    from ledserve.export.convert import ExportConfig, export_model

    items = list(held_out(HELD_OUT_SEED, examples))
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    answers = [e.answer for e in items]
    rows, out = {}, {"examples": examples, "device": device, "dtypes": {}}
    for dtype in ["fp32", *[d for d in dtypes if d != "fp32"]]:
        folder = workdir / f"demo-{dtype}"
        export_model(ExportConfig(model=str(DEMO_MODEL), output=folder, dtype=dtype, force=True))
        start = time.perf_counter()
        rows[dtype] = _answers(folder, items, device)
        texts = tokenizer.batch_decode(rows[dtype], skip_special_tokens=True)
        out["dtypes"][dtype] = {
            "exact_match": exact_match(answers, texts),
            "token_agreement_with_fp32": token_agreement(rows[dtype], rows["fp32"]),
            "answers_equal_to_fp32": sum(
                a == b for a, b in zip(rows[dtype], rows["fp32"], strict=True)
            )
            / len(items),
            "seconds": time.perf_counter() - start,
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ledserve.benchmarks.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--dtypes", default="fp32,int8,fp16")
    parser.add_argument("--workdir", type=Path, help="where to export (default: a temporary one)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        result = measure(args.examples, args.dtypes.split(","), workdir, args.device)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
