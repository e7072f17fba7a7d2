"""Answer quality of reduced-precision artifacts on the trained demo model: exact match of each
dtype's greedy answers on held-out generated documents, and the share of fp32's tokens each dtype
reproduces at the same position. `--torch`: also transformers' `generate` on the same prompts, in
fp32 and with PyTorch's dynamic int8 quantization (benchmarks/measure.py `Baseline`), against
the same fp32 engine answers: the int8 a PyTorch user would have, beside the engine's.

    python -m ledserve.benchmarks.quality [--examples 500] [--dtypes fp32,int8,fp16]
        [--workdir DIR] [--device cpu] [--torch]

The held-out documents are those of the demo model's training report (seed HELD_OUT_SEED), never
seen in training. Prints one JSON object.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path


def _answers(folder, items, device: str) -> tuple[list[list[int]], list]:
    """The engine's greedy answers (start token first) and the prompts it built."""
    from ledserve.demo.train import MAX_NEW_TOKENS
    from ledserve.engine.engine import Engine

    engine = Engine.from_artifacts(folder, device=device, max_rows=256, max_queue=len(items))
    try:
        prompts = [engine.prompts.build(e.question, e.context) for e in items]
        rows = engine.generate(
            [p.input_ids for p in prompts], [p.global_attention_mask for p in prompts],
            max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False,
        )  # fmt: skip
        return rows, prompts
    finally:
        engine.stop()


def _torch_answers(checkpoint, prompts, dtype: str) -> list[list[int]]:
    """transformers' greedy answers, one prompt at a time (no padding), start token first."""
    import torch

    from ledserve.benchmarks.measure import Baseline
    from ledserve.demo.train import MAX_NEW_TOKENS

    model, rows = Baseline(checkpoint, "cpu", dtype).model, []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p.input_ids])
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids),
                global_attention_mask=torch.tensor([p.global_attention_mask]),
                max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False,
            )  # fmt: skip
            rows.append(out[0].tolist())
    return rows


def token_agreement(rows: list[list[int]], reference: list[list[int]]) -> float:
    """Share of the reference's tokens equal at the same position (a longer or shorter answer
    counts its missing positions as different)."""
    pairs = zip(rows, reference, strict=True)
    same = sum(a == b for r, ref in pairs for a, b in zip(r, ref, strict=False))
    return same / sum(max(len(r), len(ref)) for r, ref in zip(rows, reference, strict=True))


def measure(examples: int, dtypes: list[str], workdir: Path, device: str = "cpu",
            torch_sides: bool = False) -> dict:  # fmt: skip
    from transformers import AutoTokenizer

    from ledserve.demo.model import DEMO_MODEL
    from ledserve.demo.synthetic import examples as held_out
    from ledserve.demo.train import HELD_OUT_SEED, exact_match
    from ledserve.export.convert import ExportConfig, export_model

    items = list(held_out(HELD_OUT_SEED, examples))
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    answers = [e.answer for e in items]
    rows, out = {}, {"examples": examples, "device": device, "dtypes": {}}

    def score(name: str, start: float):
        texts = tokenizer.batch_decode(rows[name], skip_special_tokens=True)
        out["dtypes"][name] = {
            "exact_match": exact_match(answers, texts),
            "token_agreement_with_fp32": token_agreement(rows[name], rows["fp32"]),
            "answers_equal_to_fp32": sum(
                a == b for a, b in zip(rows[name], rows["fp32"], strict=True)
            )
            / len(items),
            "seconds": time.perf_counter() - start,
        }

    for dtype in ["fp32", *[d for d in dtypes if d != "fp32"]]:
        folder = workdir / f"demo-{dtype}"
        export_model(ExportConfig(model=str(DEMO_MODEL), output=folder, dtype=dtype, force=True))
        start = time.perf_counter()
        rows[dtype], prompts = _answers(folder, items, device)
        score(dtype, start)
    for dtype in ("fp32", "int8") if torch_sides else ():
        start = time.perf_counter()
        rows[f"torch-{dtype}"] = _torch_answers(DEMO_MODEL, prompts, dtype)
        score(f"torch-{dtype}", start)
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
    parser.add_argument("--torch", action="store_true", help="also transformers fp32 and int8")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        result = measure(args.examples, args.dtypes.split(","), workdir, args.device, args.torch)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
