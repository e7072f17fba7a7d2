"""`ledserve demo`: the main job end to end. Export the embedded trained models (or reuse the
exports), serve both in a child process, stream the generated answer to a question about a
generated document, ask the extractive model the same question about the same document, check
both answers, and shut the server down with SIGTERM."""

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from ledserve.demo.model import DEMO_EXTRACTIVE, default_artifacts, demo_example
from ledserve.export.convert import ExportError
from ledserve.server.ask import print_answer
from ledserve.server.client import Client


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--workdir", type=Path, help="keep (and reuse) model and artifacts")
    parser.add_argument("--port", type=int, help="default: a free port")


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ledserve-demo-") as scratch:
        workdir = Path(args.workdir or scratch)
        try:
            artifacts = default_artifacts(workdir / "artifacts")
            extractive = default_artifacts(workdir / "extractive", DEMO_EXTRACTIVE)
        except ExportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        example = demo_example()
        port = args.port or free_port()
        log_path = workdir / "server.log"
        print(f"[demo] serving on 127.0.0.1:{port} (log: {log_path})", file=sys.stderr)
        command = [sys.executable, "-m", "ledserve", "serve", "--artifacts", str(artifacts),
                   "--artifacts", str(extractive), "--port", str(port),
                   "--device", "cpu"]  # fmt: skip
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
                    span = extract(client, example)
            except TimeoutError as e:
                print(f"error: {e}; server log:\n{log_path.read_text()[-3000:]}", file=sys.stderr)
                answer = span = None
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
        if span is not None:
            verdict = "correct" if span == example.value else "wrong"
            print(f"[demo] expected span: {example.value} ({verdict})", file=sys.stderr)
        print(f"[demo] server stopped (exit status {status})", file=sys.stderr)
        if not args.workdir:
            print("[demo] (a temporary folder, removed on exit: --workdir DIR keeps and reuses it)",
                  file=sys.stderr)  # fmt: skip
    return 0 if answer is not None and span is not None and status == 0 else 1


def extract(client, example) -> str | None:
    """The extractive model's best span for the same question and document (the no-answer may
    win), printed with its score; None when the server refused or failed the request."""
    import grpc

    print("[demo] extractive answer (the extractive model, same question and document): ", end="",
          file=sys.stderr)  # fmt: skip
    try:
        reply = client.extract(example.question, [example.context], request_id="demo-extract",
                               handle_impossible_answer=True, timeout=120)  # fmt: skip
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
        return None
    best = reply.answers[0]
    print(best.text or "(no answer)", flush=True)
    print(f"[demo] span score {best.score:.3f} at characters {best.start}-{best.end}; no-answer "
          f"score {reply.no_answer_score:.3f}; {reply.input_tokens} tokens in {reply.windows} "
          f"window(s), {reply.total_seconds:.3f} s", file=sys.stderr)  # fmt: skip
    return best.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
