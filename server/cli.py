"""`ledserve serve`: the server's command-line front (its lifecycle is server/app.py). Imported
only when `ledserve serve` runs."""

import argparse
import asyncio
import sys
from pathlib import Path

from ledserve.engine.engine import EngineConfig
from ledserve.server.app import ServerConfig
from ledserve.server.app import serve as run_server
from ledserve.server.logs import configure
from ledserve.server.security import read_tokens


def add_arguments(parser: argparse.ArgumentParser):
    defaults = EngineConfig()
    parser.add_argument(
        "--artifacts",
        type=Path,
        action="append",
        help="an exported folder; repeatable, one per task (a generative LED's, an extractive "
        "Longformer's) (default: the embedded demo model, exported on first use)",
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
        help="input tokens whose cross K/V are held at once (requests x the longest input)",
    )
    parser.add_argument(
        "--max-encoder-batch-tokens",
        type=int,
        default=defaults.max_encoder_batch_tokens,
        help="padded input tokens in one encoder run (bounds its activation memory)",
    )
    parser.add_argument(
        "--max-global-tokens",
        type=int,
        default=defaults.max_global_tokens,
        help="tokens one input may mark global (the question's, for documents)",
    )
    parser.add_argument(
        "--cpu-decode-share",
        type=float,
        default=defaults.cpu_decode_share,
        help="on a CPU, the share of time decode steps take while inputs are encoded (0.05-1)",
    )
    parser.add_argument(
        "--prompt-lookup",
        type=int,
        metavar="N",
        help="greedy requests that do not set prompt_lookup_num_tokens draft N tokens per step "
        "from their input (prompt lookup; the same answers; default: off)",
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
    parser.add_argument(
        "--max-rows-per-client",
        type=int,
        help="decoder rows one client's requests may hold (default: half of --max-rows)",
    )
    parser.add_argument(
        "--max-requests-per-client", type=int, help="RPCs one client may have in flight"
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve over TLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA: clients must present a certificate it signed"
    )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        help="`name:token` lines; every RPC but health needs `authorization: Bearer TOKEN`",
    )
    parser.add_argument("--no-reflection", action="store_true", help="no gRPC reflection service")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))


def run(args: argparse.Namespace) -> int:
    configure(args.log_level)
    try:
        tokens = read_tokens(args.auth_token_file) if args.auth_token_file else None
        client_rows = args.max_rows_per_client
        if client_rows is None:  # room for a second client, and for one request of max_beams
            client_rows = min(max(args.max_rows // 2, args.max_beams), args.max_rows)
        config = ServerConfig(
            # None: the demo model, prepared after listening
            artifacts=args.artifacts[0] if args.artifacts else None,
            more_artifacts=tuple(args.artifacts[1:]) if args.artifacts else (),
            host=args.host,
            port=args.port,
            device=args.device,
            engine=EngineConfig(
                max_rows=args.max_rows,
                max_queue=args.max_queue,
                max_beams=args.max_beams,
                max_encoder_tokens=args.max_encoder_tokens,
                max_encoder_batch_tokens=args.max_encoder_batch_tokens,
                max_client_rows=client_rows,
                max_global_tokens=args.max_global_tokens,
                cpu_decode_share=args.cpu_decode_share,
                prompt_lookup=args.prompt_lookup,
            ),
            metrics_port=args.metrics_port,
            grace_seconds=args.grace_seconds,
            max_concurrent_rpcs=args.max_concurrent_rpcs,
            max_message_bytes=args.max_message_bytes,
            verify_artifacts=not args.no_verify,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            auth_tokens=tokens,
            reflection=not args.no_reflection,
            max_requests_per_client=args.max_requests_per_client,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(run_server(config))
