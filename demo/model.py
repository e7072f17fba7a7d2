"""The embedded default models, exported on first use: a small LED trained by demo/train.py on
demo/synthetic.py's long-context QA (demo/checkpoint/), and a small extractive Longformer trained
by demo/train_extractive.py on the same documents (demo/extractive/); and the demo's question."""

import hashlib
import os
import sys
from pathlib import Path

from ledserve.demo.synthetic import Example, approximate_tokens, examples
from ledserve.export import attention, extractive, fused, graphs
from ledserve.export.cli import summary
from ledserve.export.convert import ExportConfig, export_model
from ledserve.manifest import FORMAT_VERSION, MANIFEST

DEMO_MODEL = Path(__file__).parent / "checkpoint"
DEMO_EXTRACTIVE = Path(__file__).parent / "extractive"
DEMO_SEED = 2026


def demo_example() -> Example:
    """A generated document of 3000+ tokens whose needed fact is past its middle (dozens of
    attention windows from the question); the same one on every machine."""
    for example in examples(DEMO_SEED, 1000):
        if (
            approximate_tokens(example.context) > 3000
            and example.fact_start > len(example.context) * 0.6
        ):
            return example
    raise RuntimeError("no demo example in 1000 draws")


def _version(model: Path) -> str:
    """The sha256 of the shipped weights and tokenizer and of the code that builds the graphs,
    shortened: a new model, or graphs built differently, get a new cache."""
    digest = hashlib.sha256()
    code = (attention, fused, graphs, extractive)
    for path in (model / "model.safetensors", model / "tokenizer.json",
                 *(Path(m.__file__) for m in code)):  # fmt: skip
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def default_artifacts(folder: Path | None = None, model: Path = DEMO_MODEL) -> Path:
    """A demo model (the LED unless `model` says DEMO_EXTRACTIVE) exported (fp32, validated
    against transformers) into `folder`, or into $XDG_CACHE_HOME/ledserve (~/.cache/ledserve)
    when none is given; reused once exported."""
    if folder is None:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        # The manifest format in the name: artifacts of an older ledserve are not reused.
        kind = "demo" if model == DEMO_MODEL else "demo-extractive"
        folder = cache / "ledserve" / f"{kind}-f{FORMAT_VERSION}-{_version(model)}"
    if (folder / MANIFEST).exists():
        print(f"[ledserve] reusing the exported demo model in {folder}", file=sys.stderr)
        return folder
    print(f"[ledserve] exporting the embedded demo model {model.name} to {folder}", file=sys.stderr)
    manifest = export_model(ExportConfig(model=str(model), output=folder, validate=True))
    print(summary(folder, manifest), file=sys.stderr)
    return folder
