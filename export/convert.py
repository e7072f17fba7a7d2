"""Export a checkpoint (hub id or local folder) to an artifacts folder: an LED (generation), or a
Longformer with a question-answering head (extractive QA).

Loads with `from_pretrained`, traces the task's graphs (an LED's encoder and decoder, a
Longformer's span graph) through optimum's exporter,
optionally converts them to fp16, validates them against transformers, and writes the tokenizer,
configs and manifest. Everything is built in a temporary sibling folder that replaces the output
only when all steps succeeded: a failure leaves nothing half-written behind.
"""

import shutil
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from optimum.exporters.onnx.convert import export_pytorch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    GenerationConfig,
    LEDForConditionalGeneration,
    LongformerForQuestionAnswering,
)
from transformers.utils import logging as hf_logging

from ledserve.export import extractive, graphs
from ledserve.export.fp16 import to_fp16
from ledserve.export.int8 import to_int8
from ledserve.export.manifest import build_manifest, graph_signature
from ledserve.export.validate import format_table, validate
from ledserve.manifest import Graph, Manifest

# model_type -> (the transformers class loaded, the graphs exported: file stem -> (module, config))
MODELS = {
    "led": (LEDForConditionalGeneration, graphs.GRAPHS),
    "longformer": (LongformerForQuestionAnswering, extractive.GRAPHS),
}

DTYPES = ("fp32", "fp16", "int8")
# Graphs whose initializers pass this many bytes keep their weights in one external data file
# beside them (protobuf cannot hold a message of 2 GiB).
EXTERNAL_DATA_BYTES = 1_900_000_000


class ExportError(Exception):
    """A problem the user can fix: its message says what and how."""


@dataclass(frozen=True)
class ExportConfig:
    """What to export and how."""

    model: str
    """Hub id or local folder of an LED checkpoint (`from_pretrained` accepts both)."""
    output: Path
    """Artifacts folder to create."""
    dtype: str = "fp32"
    """fp32, fp16 (weights and activations; logits stay fp32) or int8 (MatMul weights,
    dynamically quantized activations; everything else fp32)."""
    opset: int = 17
    """ONNX opset of the exported graphs."""
    validate: bool = False
    """Compare the graphs with transformers on fresh random inputs; fail past the tolerance."""
    force: bool = False
    """Replace an existing output folder."""
    device: str = "cpu"
    """Execution provider used by validation: cpu or cuda."""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not 14 <= self.opset <= 20:
            raise ExportError(f"opset must be between 14 and 20, got {self.opset}")
        if self.device not in ("cpu", "cuda"):
            raise ExportError(f"device must be cpu or cuda, got {self.device!r}")


@contextmanager
def step(message: str):
    """Progress on stderr: the step as it starts, then its duration."""
    print(f"{message} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        yield
    except BaseException:
        print(f"  failed after {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
        raise
    print(f"  done in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def load_checkpoint(name: str):
    """Model, tokenizer and generation config (None for an extractive model) through
    `from_pretrained`, with clear errors."""
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise ExportError(f"model folder not found: {name}")
    source = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ExportError(f"could not load a model config from {name!r}: {e}") from e
    if config.model_type not in MODELS:
        raise ExportError(
            f"{name!r} is a {config.model_type!r} model; ledserve exports LED models (model_type "
            "'led', e.g. allenai/led-base-16384) and Longformer question-answering models "
            "(model_type 'longformer', e.g. mrm8488/longformer-base-4096-finetuned-squadv2)"
        )
    model_class = MODELS[config.model_type][0]
    architectures = config.architectures or []
    if config.model_type == "longformer" and model_class.__name__ not in architectures:
        raise ExportError(
            f"{name!r} is a Longformer without a question-answering head (its architectures: "
            f"{', '.join(architectures) or 'none'}); ledserve exports "
            "LongformerForQuestionAnswering checkpoints"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ExportError(f"{name!r} has no loadable tokenizer: {e}") from e
    if not tokenizer.is_fast:  # the span answers need its offsets and word ids
        raise ExportError(f"{name!r} has no fast tokenizer (tokenizer.json or vocab + merges)")
    model = model_class.from_pretrained(source, dtype=torch.float32).eval()
    if config.model_type == "longformer":
        return model, tokenizer, None
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        generation = GenerationConfig.from_model_config(model.config)
    return model, tokenizer, generation


def save_onnx(model: onnx.ModelProto, path: Path, external_bytes: int = EXTERNAL_DATA_BYTES):
    """Save a graph, moving weights to `<name>.data` once they pass `external_bytes`."""
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if weights < external_bytes:
        onnx.save(model, str(path))
        return
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{path.name}.data",
        size_threshold=1024,
    )


def _export_graph(graph, onnx_config, path: Path, opset: int, dtype: str) -> Graph:
    """Trace one graph with optimum's exporter (TorchScript), convert it to fp16 if asked, save it
    into the artifacts folder; returns its signature."""
    traced = path.with_suffix(".trace")  # a scratch folder inside the temporary artifacts folder
    traced.mkdir()
    with step(f"exporting {path.name} (opset {opset})"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: validation is the check
        export_pytorch(graph, onnx_config, opset, traced / path.name)
    if dtype == "fp16":
        with step(f"converting {path.name} to fp16"):
            model = to_fp16(traced / path.name, onnx_config.FP32_OUTPUTS)
    elif dtype == "int8":
        with step(f"quantizing {path.name} to int8"):
            model = to_int8(traced / path.name)
    else:
        model = onnx.load(str(traced / path.name))
    save_onnx(model, path)
    shutil.rmtree(traced)
    return graph_signature(model, path.name)


def export_model(cfg: ExportConfig) -> Manifest:
    """Run the whole export; returns the manifest. Raises ExportError on anything user-fixable."""
    # A symbolic link names the folder it points to: that folder is replaced, the link stays.
    output = Path(cfg.output).expanduser().resolve()
    if output.exists() and not cfg.force:
        raise ExportError(f"output folder {output} already exists; pass --force to replace it")
    hf_logging.set_verbosity_error()  # LED warns about padding on every call

    with step(f"loading {cfg.model}"):
        model, tokenizer, generation = load_checkpoint(cfg.model)
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the artifacts are not
    try:
        manifest = _build(cfg, model, tokenizer, generation, work)
        if output.is_dir():
            shutil.rmtree(output)
        elif output.exists():
            output.unlink()
        work.rename(output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _build(cfg, model, tokenizer, generation, work: Path) -> Manifest:
    config = model.config
    exported = {}
    for name, (graph, onnx_config) in MODELS[config.model_type][1].items():
        exported[name] = _export_graph(
            graph(model).eval(), onnx_config(config), work / f"{name}.onnx", cfg.opset, cfg.dtype
        )

    report = None
    if cfg.validate:
        with step(f"validating against transformers on {cfg.device}"):
            try:
                report = validate(model, work, cfg.dtype, cfg.device)
            except RuntimeError as e:  # onnxruntime's errors, a provider that will not start
                raise ExportError(f"validation could not run on {cfg.device}: {e}") from e
        print(format_table(report), file=sys.stderr)
        if not report.passed:
            raise ExportError(
                "validation failed: the exported graphs differ from transformers (table above)"
            )

    with step("writing tokenizer, configs and manifest"):
        tokenizer.save_pretrained(str(work))
        config.save_pretrained(str(work))
        if generation is not None:
            generation.save_pretrained(str(work))
        manifest = build_manifest(
            cfg.model, cfg.dtype, cfg.opset, model, generation, exported, report
        ).write(work)
    return manifest
