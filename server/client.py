"""A Python client of the LedServe service (sync gRPC): stream an answer, get it whole, extract
answer spans, describe the models, wait until the server is SERVING. Needs neither torch nor
onnxruntime."""

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb
from ledserve.proto.ledserve.v1 import ledserve_pb2_grpc
from ledserve.server.convert import kwargs_to_parameters

TRUNCATION = {"context": pb.TRUNCATE_CONTEXT, "reject": pb.REJECT}


def build_request(
    question: str | None = None,
    context: str | list[str] = (),
    *,
    input_ids: list[int] | None = None,
    global_attention_mask: list[int] | None = None,
    request_id: str = "",
    truncation: str = "context",
    **parameters,
) -> pb.GenerateRequest:
    """A GenerateRequest from a question and passages, or from token ids; `parameters` take
    transformers' names (max_new_tokens, num_beams, early_stopping=True/False/"never", ...)."""
    if (question is None) == (input_ids is None):
        raise ValueError("give either a question (with context) or input_ids")
    if truncation not in TRUNCATION:
        raise ValueError(f"truncation must be 'context' or 'reject', got {truncation!r}")
    request = pb.GenerateRequest(
        request_id=request_id,
        parameters=kwargs_to_parameters(**parameters),
        truncation=TRUNCATION[truncation],
    )
    if question is not None:
        passages = [context] if isinstance(context, str) else list(context)
        request.document.CopyFrom(pb.Document(question=question, passages=passages))
    else:
        request.tokens.CopyFrom(
            pb.TokenInput(input_ids=input_ids, global_attention_mask=global_attention_mask or [])
        )
    return request


class Client:
    def __init__(self, target: str, max_message_bytes: int = 16 << 20, *,
                 tls_ca: Path | None = None, tls_cert: Path | None = None,
                 tls_key: Path | None = None, token: str | None = None):  # fmt: skip
        """`tls_ca`: speak TLS, trusting this PEM CA (tls_cert / tls_key: the client's own
        certificate, for mutual TLS); `token`: sent as `authorization: Bearer TOKEN`."""
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_ca is None and (tls_cert or tls_key):
            raise ValueError("a client certificate needs tls_ca (the server's CA)")
        if tls_ca is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
            credentials = grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))
            self.channel = grpc.secure_channel(target, credentials, options=options)
        self.metadata = [("authorization", f"Bearer {token}")] if token else None
        self.stub = ledserve_pb2_grpc.LedServeStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def stream(self, *args, timeout: float | None = None, **kwargs) -> Iterator[pb.GenerateChunk]:
        """Chunks as they are generated, the summary on the last; arguments as build_request.
        Stopping the iteration early (or `.cancel()` on the returned call) cancels the request."""
        request = build_request(*args, **kwargs)
        return self.stub.Generate(request, timeout=timeout, metadata=self.metadata)

    def generate(self, *args, timeout: float | None = None, **kwargs) -> pb.GenerateResponse:
        request = build_request(*args, **kwargs)
        return self.stub.GenerateAll(request, timeout=timeout, metadata=self.metadata)

    def extract(self, question: str, context: str | list[str], *, request_id: str = "",
                timeout: float | None = None, **parameters) -> pb.ExtractResponse:  # fmt: skip
        """Answer spans from the passages; `parameters`: top_k, max_answer_len,
        handle_impossible_answer, doc_stride, max_seq_len."""
        passages = [context] if isinstance(context, str) else list(context)
        values = {k: v for k, v in parameters.items() if v is not None}
        request = pb.ExtractRequest(
            request_id=request_id,
            document=pb.Document(question=question, passages=passages),
            parameters=pb.ExtractParameters(**values),
        )
        return self.stub.Extract(request, timeout=timeout, metadata=self.metadata)

    def describe(self, timeout: float | None = None) -> pb.ModelInfo:
        request = pb.DescribeModelRequest()
        return self.stub.DescribeModel(request, timeout=timeout, metadata=self.metadata)

    def serving(self) -> bool:
        try:
            reply = self.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def wait_until_serving(self, timeout: float = 300, alive=lambda: True):
        """Poll the health service; `alive` (e.g. a server process's poll) stops a hopeless wait."""
        deadline = time.monotonic() + timeout
        while not self.serving():
            if time.monotonic() > deadline or not alive():
                raise TimeoutError(f"the server did not become SERVING within {timeout} s")
            time.sleep(0.2)

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
