"""The `ledserve` command: one entry point over the project's parts.

Each subcommand lives with its part (export/cli.py, ...); this module only dispatches.
"""

import argparse
import sys
import tempfile
from pathlib import Path


def demo(args: argparse.Namespace) -> int:
    """Build the embedded default model (a tiny random LED for now), export and validate it."""
    from export.cli import summary
    from export.convert import ExportConfig, ExportError, export_model
    from export.tiny import build_random_led

    with tempfile.TemporaryDirectory(prefix="ledserve-demo-") as scratch:
        workdir = Path(args.workdir or scratch)
        checkpoint, artifacts = workdir / "checkpoint", workdir / "artifacts"
        if not (checkpoint / "config.json").exists():
            print(f"building a tiny random LED in {checkpoint} ...", file=sys.stderr)
            build_random_led(checkpoint)
        try:
            manifest = export_model(
                ExportConfig(model=str(checkpoint), output=artifacts, validate=True, force=True)
            )
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(summary(artifacts, manifest))
        if not args.workdir:
            print("(a temporary folder, removed on exit: pass --workdir DIR to keep it)")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ledserve", description="LED long-document QA serving")
    commands = parser.add_subparsers(dest="command", required=True)

    from export.cli import add_arguments, run

    add_arguments(commands.add_parser("export", help="export an LED checkpoint to ONNX"))
    demo_parser = commands.add_parser("demo", help="export the embedded default model end to end")
    demo_parser.add_argument("--workdir", type=Path, help="keep the model and artifacts here")

    args = parser.parse_args(argv)
    if args.command == "export":
        return run(args)
    return demo(args)


if __name__ == "__main__":
    sys.exit(main())
