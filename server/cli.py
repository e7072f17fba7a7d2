"""The `ledserve` command: one entry point over the project's parts.

`export` lives with the exporter (export/cli.py); `serve`, `ask` and `demo` are here.
"""

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

_EARLY_STOPPING = {"true": True, "false": False, "never": "never"}


def _numeric_parameters() -> list[tuple[str, type]]:
    """ask's numeric generation flags, read from the proto: (parameter name, int or float)."""
    from proto.ledserve.v1 import ledserve_pb2 as pb

    fields = pb.GenerationParameters.DESCRIPTOR.fields
    return [
        (f.name, float if f.type == f.TYPE_DOUBLE else int)
        for f in fields
        if f.type != f.TYPE_BOOL and f.enum_type is None
    ]


def add_serve_arguments(parser: argparse.ArgumentParser):
    from engine.engine import EngineConfig

    defaults = EngineConfig()
    parser.add_argument(
        "--artifacts",
        type=Path,
        help="an exported folder (default: the embedded demo model, exported on first use)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--max-rows",
        type=int,
        default=defaults.max_rows,
        help="decoder rows (beams included) per step",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=defaults.max_queue,
        help="waiting requests; past it RESOURCE_EXHAUSTED",
    )
    parser.add_argument("--max-beams", type=int, default=defaults.max_beams)
    parser.add_argument(
        "--max-encoder-tokens",
        type=int,
        default=defaults.max_encoder_tokens,
        help="input tokens whose cross K/V are held at once",
    )
    parser.add_argument(
        "--max-encoder-batch-tokens",
        type=int,
        default=defaults.max_encoder_batch_tokens,
        help="padded input tokens in one encoder run (bounds its activation memory)",
    )
    parser.add_argument("--max-concurrent-rpcs", type=int, default=1024)
    parser.add_argument("--max-message-bytes", type=int, default=16 << 20)
    parser.add_argument("--metrics-port", type=int, help="expose Prometheus /metrics here")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=30.0,
        help="drain time for in-flight requests after SIGTERM",
    )
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the artifacts' sha256 check at load"
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))


def _default_artifacts() -> Path:
    """The embedded demo model's export (made on first use); torch is imported only here."""
    from export.convert import ExportError
    from export.demo import default_artifacts

    try:
        return default_artifacts()
    except ExportError as e:
        raise ValueError(str(e)) from e


def serve(args: argparse.Namespace) -> int:
    from engine.engine import EngineConfig
    from server.app import ServerConfig
    from server.app import serve as run_server
    from server.logs import configure

    configure(args.log_level)
    try:
        config = ServerConfig(
            artifacts=args.artifacts or _default_artifacts(),
            host=args.host,
            port=args.port,
            device=args.device,
            engine=EngineConfig(
                max_rows=args.max_rows,
                max_queue=args.max_queue,
                max_beams=args.max_beams,
                max_encoder_tokens=args.max_encoder_tokens,
                max_encoder_batch_tokens=args.max_encoder_batch_tokens,
            ),
            metrics_port=args.metrics_port,
            grace_seconds=args.grace_seconds,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_message_bytes=args.max_message_bytes,
            verify_artifacts=not args.no_verify,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(run_server(config))


def add_ask_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT")
    parser.add_argument("--question", required=True)
    parser.add_argument("--context", action="append", default=[], help="a passage (repeatable)")
    parser.add_argument(
        "--context-file",
        action="append",
        default=[],
        type=Path,
        help="a .txt, .md or .pdf passage (repeatable)",
    )
    parser.add_argument(
        "--truncation",
        choices=("context", "reject"),
        default="context",
        help="an over-long input: cut the context's end, or refuse it",
    )
    parser.add_argument("--timeout", type=float, help="deadline in seconds")
    parser.add_argument("--request-id", default="")
    for name, kind in _numeric_parameters():
        parser.add_argument("--" + name.replace("_", "-"), type=kind)
    parser.add_argument("--early-stopping", choices=sorted(_EARLY_STOPPING))
    parser.add_argument("--do-sample", action="store_true", default=None)


def ask(args: argparse.Namespace) -> int:
    """Stream the answer to stdout as it is generated; the summary goes to stderr."""
    from server.client import Client
    from server.documents import read_document

    if not args.context and not args.context_file:
        print("error: give --context TEXT or --context-file FILE", file=sys.stderr)
        return 2
    try:
        passages = args.context + [read_document(f) for f in args.context_file]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parameters = {name: getattr(args, name) for name, _ in _numeric_parameters()}
    parameters["do_sample"] = args.do_sample
    if args.early_stopping:
        parameters["early_stopping"] = _EARLY_STOPPING[args.early_stopping]
    with Client(args.server) as client:
        text = print_answer(
            client,
            args.question,
            passages,
            request_id=args.request_id,
            truncation=args.truncation,
            timeout=args.timeout,
            **parameters,
        )
    return 0 if text is not None else 1


def print_answer(client, question: str, passages: list[str], **kwargs) -> str | None:
    """Print the answer's text as it streams, then its summary on stderr; the answer's text, or
    None when the server refused or failed the request."""
    import grpc

    from proto.ledserve.v1 import ledserve_pb2 as pb

    text = ""
    try:
        for chunk in client.stream(question, passages, **kwargs):
            print(chunk.text, end="", flush=True)
            text += chunk.text
            summary = chunk.summary
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
        return None
    print()
    usage, t = summary.usage, summary.timings
    truncated = usage.truncated_context_tokens
    print(
        f"[{pb.FinishReason.Name(summary.finish_reason).lower()}: {usage.generated_tokens} "
        f"tokens from {usage.input_tokens} input tokens"
        + (f" ({truncated} context tokens cut to fit the model)" if truncated else "")
        + f"; first token {t.first_token_seconds:.3f} s, total {t.total_seconds:.3f} s]",
        file=sys.stderr,
    )
    return text


def demo(args: argparse.Namespace) -> int:
    """The main job end to end: export the embedded trained model (or reuse the export), serve it
    in a child process, stream the answer to a question about a generated document, check it,
    and shut the server down with SIGTERM."""
    from export.convert import ExportError
    from export.demo import default_artifacts, demo_example
    from server.client import Client

    with tempfile.TemporaryDirectory(prefix="ledserve-demo-") as scratch:
        workdir = Path(args.workdir or scratch)
        try:
            artifacts = default_artifacts(workdir / "artifacts")
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        example = demo_example()
        port = args.port or _free_port()
        log_path = workdir / "server.log"
        print(f"[demo] serving on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
        command = [sys.executable, "-m", "server.cli", "serve", "--artifacts", str(artifacts),
                   "--port", str(port), "--device", "cpu"]  # fmt: skip
        with log_path.open("w") as log, subprocess.Popen(command, stderr=log) as process:
            try:
                with Client(f"127.0.0.1:{port}") as client:
                    client.wait_until_serving(timeout=300, alive=lambda: process.poll() is None)
                    fact = example.context[example.fact_start :].split(".")[0] + "."
                    print(
                        f"[demo] document: {len(example.context.split())} words of generated "
                        f"text about many people; the fact needed, at character "
                        f"{example.fact_start} of {len(example.context)}: {fact!r}",
                        file=sys.stderr,
                    )
                    print(f"[demo] question: {example.question}", file=sys.stderr)
                    print("[demo] answer: ", end="", file=sys.stderr, flush=True)
                    answer = print_answer(
                        client, example.question, [example.context], request_id="demo", timeout=120
                    )
            except TimeoutError as e:
                print(f"error: {e}; server log:\n{log_path.read_text()[-3000:]}", file=sys.stderr)
                answer = None
            finally:
                process.send_signal(signal.SIGTERM)
                try:
                    status = process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    status = "killed after 60 s"
        if answer is not None:
            verdict = "correct" if answer.strip() == example.answer else "wrong"
            print(f"[demo] expected: {example.answer} ({verdict})", file=sys.stderr)
        print(f"[demo] server stopped (exit status {status})", file=sys.stderr)
        if not args.workdir:
            print("[demo] (a temporary folder, removed on exit: --workdir DIR keeps and reuses it)",
                  file=sys.stderr)  # fmt: skip
    return 0 if answer is not None and status == 0 else 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ledserve", description="LED long-document QA serving")
    commands = parser.add_subparsers(dest="command", required=True)

    from export.cli import add_arguments, run

    add_arguments(commands.add_parser("export", help="export an LED checkpoint to ONNX"))
    add_serve_arguments(commands.add_parser("serve", help="serve exported artifacts over gRPC"))
    add_ask_arguments(commands.add_parser("ask", help="ask a running server a question"))
    demo_parser = commands.add_parser(
        "demo", help="export the embedded default model, serve it and stream an answer"
    )
    demo_parser.add_argument("--workdir", type=Path, help="keep (and reuse) model and artifacts")
    demo_parser.add_argument("--port", type=int, help="default: a free port")
    from benchmarks.run import add_arguments as add_bench_arguments
    from benchmarks.run import bench

    add_bench_arguments(commands.add_parser("bench", help="benchmark against transformers"))

    args = parser.parse_args(argv)
    handlers = {"export": run, "serve": serve, "ask": ask, "demo": demo, "bench": bench}
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
