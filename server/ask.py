"""`ledserve ask`: the client command. Streams an answer from a running server to stdout, its
summary to stderr. Imports only grpcio and protobuf (never torch or onnxruntime), so it starts
quickly on any machine."""

import argparse
import os
import sys
from pathlib import Path

_EARLY_STOPPING = {"true": True, "false": False, "never": "never"}


def _fields(kind: str) -> list:
    """Generation fields of the proto: "numeric" (one int or float each) or "bool"."""
    from google.protobuf.descriptor import FieldDescriptor as F

    from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb

    fields = [f for f in pb.GenerationParameters.DESCRIPTOR.fields if not f.is_repeated]
    if kind == "bool":
        return [f.name for f in fields if f.type == F.TYPE_BOOL]
    numeric = {F.TYPE_DOUBLE: float, F.TYPE_INT32: int, F.TYPE_UINT64: int}
    return [(f.name, numeric[f.type]) for f in fields if f.type in numeric]


def _ids(text: str) -> list[int]:
    """ "5,17,3" -> [5, 17, 3] (a flag's token ids)."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated token ids, got {text!r}"
        ) from None


def _decay(text: str) -> tuple[int, float]:
    try:
        start, factor = text.split(",")
        return int(start), float(factor)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected START,FACTOR (e.g. 20,1.05), got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser):
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
    parser.add_argument("--tls-ca", type=Path, help="speak TLS, trusting this PEM CA")
    parser.add_argument("--tls-cert", type=Path, help="the client's PEM certificate (mutual TLS)")
    parser.add_argument("--tls-key", type=Path, help="the client's PEM key (mutual TLS)")
    parser.add_argument(
        "--token", help="sent as `authorization: Bearer TOKEN` (default: $LEDSERVE_TOKEN)"
    )
    parser.add_argument("--request-id", default="")
    for name, kind in _fields("numeric"):
        parser.add_argument("--" + name.replace("_", "-"), type=kind)
    parser.add_argument("--early-stopping", choices=sorted(_EARLY_STOPPING))
    for name in _fields("bool"):  # --do-sample, --renormalize-logits, --output-scores
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", default=None)
    parser.add_argument(
        "--stop", action="append", help="end the answer before this text (repeatable)"
    )
    parser.add_argument(
        "--bad-words-ids", action="append", type=_ids, metavar="IDS",
        help="comma-separated token ids that may not be generated in a row (repeatable)",
    )  # fmt: skip
    parser.add_argument("--suppress-tokens", type=_ids, metavar="IDS", help="never generate")
    parser.add_argument(
        "--begin-suppress-tokens", type=_ids, metavar="IDS", help="do not generate first"
    )
    parser.add_argument(
        "--exponential-decay-length-penalty", type=_decay, metavar="START,FACTOR",
        help="EOS grows more likely by FACTOR per token after START tokens",
    )  # fmt: skip
    extractive = parser.add_argument_group(
        "extractive answers (--extractive: answer spans from the passages, Extract)"
    )
    extractive.add_argument("--extractive", action="store_true")
    extractive.add_argument("--answers", type=int, help="answers to return (the pipeline's top_k)")
    extractive.add_argument("--max-answer-len", type=int, help="longest answer, in tokens")
    extractive.add_argument(
        "--handle-impossible-answer", action="store_true", default=None,
        help="the no-answer may be among the answers",
    )  # fmt: skip
    extractive.add_argument("--doc-stride", type=int, help="tokens shared by neighbouring windows")
    extractive.add_argument("--max-seq-len", type=int, help="tokens per window")


def run(args: argparse.Namespace) -> int:
    """Stream the answer to stdout as it is generated; the summary goes to stderr."""
    from ledserve.server.client import Client
    from ledserve.server.documents import read_document

    if not args.context and not args.context_file:
        print("error: give --context TEXT or --context-file FILE", file=sys.stderr)
        return 2
    try:
        passages = args.context + [read_document(f) for f in args.context_file]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = [name for name, _ in _fields("numeric")] + _fields("bool") + [
        "stop", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
        "exponential_decay_length_penalty",
    ]  # fmt: skip
    parameters = {name: getattr(args, name) for name in names}
    if args.early_stopping:
        parameters["early_stopping"] = _EARLY_STOPPING[args.early_stopping]
    token = args.token or os.environ.get("LEDSERVE_TOKEN") or None
    try:
        client = Client(args.server, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                        tls_key=args.tls_key, token=token)  # fmt: skip
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with client:
        if args.extractive:
            return print_extraction(client, args, passages)
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

    from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb

    text, scores = "", []
    try:
        for chunk in client.stream(question, passages, **kwargs):
            print(chunk.text, end="", flush=True)
            text += chunk.text
            scores += zip(chunk.token_ids, chunk.scores, strict=False)  # none without scores
            summary = chunk.summary
    except grpc.RpcError as e:
        print(f"\nerror: {e.code().name}: {e.details()}", file=sys.stderr)
        return None
    print()
    usage, t = summary.usage, summary.timings
    truncated, chars = usage.truncated_context_tokens, usage.truncated_context_characters
    print(
        f"[{pb.FinishReason.Name(summary.finish_reason).lower()}: {usage.generated_tokens} "
        f"tokens from {usage.input_tokens} input tokens"
        + (f" ({truncated} context tokens cut to fit the model)" if truncated else "")
        + (f" (and {chars} characters before tokenizing)" if chars else "")
        + f"; first token {t.first_token_seconds:.3f} s, total {t.total_seconds:.3f} s]",
        file=sys.stderr,
    )
    for token, score in scores:  # --output-scores
        top = " ".join(f"{t.token_id}:{t.logprob:.4f}" for t in score.top)
        print(f"  token {token}: logprob {score.logprob:.4f}" + (f"  top {top}" if top else ""),
              file=sys.stderr)  # fmt: skip
    return text


def print_extraction(client, args, passages: list[str]) -> int:
    """Print each extracted answer (best first) with its score and place, and the no-answer's
    score; 0, or 1 when the server refused or failed the request."""
    import grpc

    try:
        reply = client.extract(
            args.question,
            passages,
            request_id=args.request_id,
            timeout=args.timeout,
            top_k=args.answers,
            max_answer_len=args.max_answer_len,
            handle_impossible_answer=args.handle_impossible_answer,
            doc_stride=args.doc_stride,
            max_seq_len=args.max_seq_len,
        )
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    for a in reply.answers:
        print(a.text if a.text else "(no answer)")
        print(f"  [score {a.score:.4f}, passage {a.passage}, characters {a.start}-{a.end}]",
              file=sys.stderr)  # fmt: skip
    print(
        f"[no-answer score {reply.no_answer_score:.4f}; {reply.windows} windows, "
        f"{reply.input_tokens} tokens; total {reply.total_seconds:.3f} s]",
        file=sys.stderr,
    )
    return 0
