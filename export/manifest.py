"""The artifacts folder's manifest.json: what the engine trusts instead of hard-coding anything.

Format version, source model, dtype, opset, package versions, each file's sha256 and size, graph
signatures, tensor-name templates, model dimensions, special tokens, the input template, default
generation options and the validation results.
"""

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import onnx

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INPUT_TEMPLATE = "question: {question} context: {context}"
PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime-gpu")


def package_versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def graph_signature(model: onnx.ModelProto) -> dict:
    """Inputs and outputs: name, element type, and shape (symbolic axes by name)."""

    def describe(value):
        tensor = value.type.tensor_type
        return {
            "name": value.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
            "shape": [d.dim_param or d.dim_value for d in tensor.shape.dim],
        }

    return {
        "inputs": [describe(v) for v in model.graph.input],
        "outputs": [describe(v) for v in model.graph.output],
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(folder: Path) -> dict[str, dict]:
    """sha256 and size of every file in the folder but the manifest itself."""
    return {
        p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(folder: Path, manifest: dict) -> dict:
    manifest = {"format_version": FORMAT_VERSION, **manifest, "files": file_entries(folder)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
