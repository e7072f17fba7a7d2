"""`ledserve export` / `python -m ledserve.export`: command-line front of export/convert.py."""

import argparse
import sys
from pathlib import Path

from ledserve.export.convert import DTYPES, ExportConfig, ExportError, export_model
from ledserve.manifest import Manifest


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--model", required=True, help="hub id or local folder of an LED checkpoint"
    )
    parser.add_argument("--output", required=True, type=Path, help="artifacts folder to create")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--validate", action="store_true", help="compare with transformers on random inputs"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="provider used by --validate"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        config = ExportConfig(
            model=args.model,
            output=args.output,
            dtype=args.dtype,
            opset=args.opset,
            validate=args.validate,
            force=args.force,
            device=args.device,
        )
        manifest = export_model(config)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system's refusal (no space, a file where a folder goes, ...)
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(args.output, manifest))
    return 0


def summary(folder: Path, manifest: Manifest) -> str:
    lines = [f"exported {manifest.source.model} ({manifest.task}, {manifest.dtype}) to {folder}:"]
    lines += [
        f"  {name:<28} {entry.bytes / 2**20:9.2f} MiB" for name, entry in manifest.files.items()
    ]
    validation = manifest.validation
    lines.append(
        "  validation: "
        + (
            "not run (pass --validate)"
            if validation is None
            else f"passed ({validation.criterion}, {len(validation.checks)} checks)"
        )
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = add_arguments(
        argparse.ArgumentParser(prog="python -m ledserve.export", description=__doc__)
    )
    return run(parser.parse_args(argv))
