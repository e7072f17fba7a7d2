"""The `ledserve` command: one entry point over the project's parts.

Each subcommand lives with its part (a module with `add_arguments(parser)` and a handler) and is
imported only when it runs, so `ledserve ask` and every `--help` start without torch,
onnxruntime or transformers.
"""

import argparse
import importlib
import sys

from ledserve import __version__

# name -> (module with add_arguments(parser), its handler(args) -> exit status, one-line help)
COMMANDS = {
    "export": ("ledserve.export.cli", "run", "export an LED checkpoint to ONNX"),
    "serve": ("ledserve.server.cli", "run", "serve exported artifacts over gRPC"),
    "ask": ("ledserve.server.ask", "run", "ask a running server a question"),
    "demo": (
        "ledserve.demo.run",
        "run",
        "export the embedded default model, serve it and stream an answer",
    ),
    "bench": ("ledserve.benchmarks.run", "bench", "benchmark against transformers"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="ledserve", description="LED long-document QA serving")
    parser.add_argument("--version", action="version", version=f"ledserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    # The top level takes no option with a value, so the first word is the subcommand: only its
    # module is imported (the others' arguments are not needed to parse or to print help).
    chosen = next((word for word in argv if not word.startswith("-")), None)
    for name, (module, handler, summary) in COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == chosen:
            try:
                loaded = importlib.import_module(module)
            except ModuleNotFoundError as e:  # e.g. `serve` in a client-only install
                parser.exit(2, f"error: `ledserve {name}` needs {e.name}, which is not installed\n")
            loaded.add_arguments(sub)
            sub.set_defaults(handler=getattr(loaded, handler))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
