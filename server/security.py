"""Who may call the server, and over what: TLS credentials (optionally mutual), bearer tokens
checked by an interceptor (the health service stays open for probes), and the client identity
that per-client limits count (the token's name, else the peer's address)."""

import hmac
from pathlib import Path

import grpc

HEALTH = "/grpc.health.v1.Health/"


def read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {path}: {e.strerror}") from e


def read_tokens(path: Path) -> dict[str, str]:
    """An --auth-token-file: one `name:token` per line (blank lines and # comments skipped) ->
    token -> name."""
    tokens: dict[str, str] = {}
    lines = read_file(path, "auth token file").decode("utf-8", "replace").splitlines()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        name, token = name.strip(), token.strip()
        if not sep or not name or not token:
            raise ValueError(f"{path}:{number}: expected `name:token`")
        if len(token) < 16:
            raise ValueError(
                f"{path}:{number}: the token of {name!r} is shorter than 16 characters"
            )
        if token in tokens:
            raise ValueError(f"{path}:{number}: the token of {name!r} is also {tokens[token]!r}'s")
        tokens[token] = name
    if not tokens:
        raise ValueError(f"{path} holds no `name:token` line")
    return tokens


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS with this certificate chain and key; with `client_ca`, clients must present a
    certificate signed by it (mutual TLS)."""
    pair = (read_file(key, "TLS key"), read_file(cert, "TLS certificate"))
    roots = read_file(client_ca, "client CA certificate") if client_ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots,
                                       require_client_auth=roots is not None)  # fmt: skip


def bearer_token(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value.removeprefix("Bearer ").strip()
    return None


def token_name(tokens: dict[str, str], token: str | None) -> str | None:
    """The name of a valid token (compared in constant time), else None."""
    if token is None:
        return None
    for known, name in tokens.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            return name
    return None


def client_identity(context, tokens: dict[str, str] | None) -> str:
    """Per-client limits count by this: the token's name, else the peer's host (no port)."""
    if tokens:
        name = token_name(tokens, bearer_token(context.invocation_metadata()))
        if name is not None:
            return f"token:{name}"
    peer = context.peer() or "unknown"
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


class TokenAuth(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for every call without a valid `authorization: Bearer TOKEN`, but the
    health service's; `on_refused(method)` counts refusals."""

    def __init__(self, tokens: dict[str, str], on_refused=lambda method: None):
        self.tokens, self.on_refused = tokens, on_refused

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH):
            return handler
        if token_name(self.tokens, bearer_token(details.invocation_metadata)) is not None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        message = "missing or invalid token: send `authorization: Bearer TOKEN`"

        async def refuse(request, context):
            self.on_refused(method)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        async def refuse_stream(request, context):
            await refuse(request, context)
            yield  # never reached: makes this an async generator, as a streaming handler is

        codec = dict(request_deserializer=handler.request_deserializer,
                     response_serializer=handler.response_serializer)  # fmt: skip
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(refuse_stream, **codec)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(refuse_stream, **codec)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(refuse, **codec)
        return grpc.unary_unary_rpc_method_handler(refuse, **codec)
