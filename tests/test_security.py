"""The server's doors: TLS with a certificate made at test time, mutual TLS, bearer tokens (right,
wrong, missing; health open for probes), reflection off, the per-client limit on requests in
flight, and fair admission across clients."""

import shutil
import subprocess
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ledserve.engine.engine import EngineConfig
from ledserve.server.app import BackgroundServer, ServerConfig
from ledserve.server.client import Client
from ledserve.server.security import read_tokens

TOKEN, OTHER = "alice-0123456789abcdef", "bob-0123456789abcdef"


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, both
    signed by the CA (openssl, at test time)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no test certificates")
    folder = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=ledserve test CA", cwd=folder)  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf",
                 cwd=folder)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def locked(served_model, certs, tmp_path_factory):
    """TLS, tokens, no reflection, one request in flight per client."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"# clients\nalice:{TOKEN}\n\nbob:{OTHER}\n")
    config = ServerConfig(
        artifacts=served_model[1], port=0, device="cpu", tls_cert=certs / "server.pem",
        tls_key=certs / "server.key", auth_tokens=read_tokens(tokens), reflection=False,
        max_requests_per_client=1,
    )  # fmt: skip
    server = BackgroundServer(config)
    yield server
    server.stop()


def _client(server, certs, **kwargs):
    return Client(f"127.0.0.1:{server.port}", tls_ca=certs / "ca.pem", **kwargs)


def test_tls_and_tokens(locked, certs):
    with _client(locked, certs, token=TOKEN) as client:
        assert client.generate("q?", "c.", max_new_tokens=3).summary.usage.generated_tokens
    for token in (None, "alice-wrong-token-0000", OTHER[:-1]):
        with _client(locked, certs, token=token) as client, pytest.raises(grpc.RpcError) as no:
            client.generate("q?", "c.", max_new_tokens=3)
        assert no.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in no.value.details()
        with _client(locked, certs, token=token) as client:
            assert client.serving()  # health stays open for probes
        with _client(locked, certs, token=token) as client, pytest.raises(grpc.RpcError) as no:
            list(client.stream("q?", "c.", max_new_tokens=3))
        assert no.value.code() == grpc.StatusCode.UNAUTHENTICATED
    metrics = locked.server.metrics.requests
    assert metrics.labels("GenerateAll", "UNAUTHENTICATED")._value.get() == 3
    with Client(f"127.0.0.1:{locked.port}", token=TOKEN) as plain:  # no TLS: no connection
        with pytest.raises(grpc.RpcError) as no:
            plain.generate("q?", "c.", max_new_tokens=3, timeout=5)
        assert no.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_off_and_health_open(locked, certs):
    credentials = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{locked.port}", credentials) as channel:
        with pytest.raises(grpc.RpcError) as off:
            ProtoReflectionDescriptorDatabase(channel).get_services()
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
        stub = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        )
        with pytest.raises(grpc.RpcError) as off:
            list(stub(iter([b""]), metadata=[("authorization", f"Bearer {TOKEN}")], timeout=5))
        assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2.HealthCheckRequest(service="ledserve.v1.LedServe")
        reply = health_pb2_grpc.HealthStub(channel).Check(health)  # no token needed
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_per_client_limit(locked, certs, monkeypatch):
    engine = locked.engine
    decode = engine.runtime.decode

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return decode(*args, **kwargs)

    monkeypatch.setattr(engine.runtime, "decode", slow)
    with _client(locked, certs, token=TOKEN) as alice, _client(locked, certs, token=OTHER) as bob:
        first = alice.stream("q?", "c.", min_new_tokens=30, max_new_tokens=30)
        assert next(first).token_ids  # alice's one request is in flight
        with pytest.raises(grpc.RpcError) as refused:
            alice.generate("q?", "c.", max_new_tokens=2)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the limit is 1 per client" in refused.value.details()
        assert bob.generate("q?", "c.", max_new_tokens=2).summary.usage.generated_tokens
        list(first)
        assert alice.generate("q?", "c.", max_new_tokens=2).summary.usage.generated_tokens


def test_mutual_tls(served_model, certs):
    config = ServerConfig(artifacts=served_model[1], port=0, device="cpu",
                          tls_cert=certs / "server.pem", tls_key=certs / "server.key",
                          tls_client_ca=certs / "ca.pem")  # fmt: skip
    server = BackgroundServer(config)
    try:
        with _client(server, certs, tls_cert=certs / "client.pem",
                     tls_key=certs / "client.key") as client:  # fmt: skip
            assert client.generate("q?", "c.", max_new_tokens=2).summary.usage.generated_tokens
        with _client(server, certs) as anonymous, pytest.raises(grpc.RpcError) as refused:
            anonymous.generate("q?", "c.", max_new_tokens=2, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def _drain(call):
    try:
        list(call)
    except grpc.RpcError:  # cancelled at the end of the test
        pass


def test_a_greedy_client_leaves_rows_for_others(served_model):
    """One client's 8 long beam-4 requests hold at most max_client_rows; another client's
    small request starts at once instead of waiting for them."""
    engine_config = EngineConfig(max_rows=16, max_client_rows=8, max_beams=4)
    server = BackgroundServer(ServerConfig(artifacts=served_model[1], port=0, device="cpu",
                                           engine=engine_config))  # fmt: skip
    target = f"127.0.0.1:{server.port}"
    try:
        greedy = [Client(target) for _ in range(8)]
        calls = [c.stream("q?", "c.", num_beams=4, min_new_tokens=60, max_new_tokens=60)
                 for c in greedy]  # fmt: skip
        threads = [threading.Thread(target=_drain, args=(call,)) for call in calls]
        for t in threads:
            t.start()
        while len(server.engine.running) < 2:
            time.sleep(0.01)
        assert sum(r.rows for r in server.engine.running) <= 8
        # The small request comes from the same host: tag it as another client by calling
        # the engine the way the service does.
        small = server.engine.submit([0, 5, 6, 2], client="small", max_new_tokens=2)
        deadline = time.monotonic() + 30
        while "first_token" not in small.times and "finished" not in small.times:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert any(r.rows == 4 for r in server.engine.waiting)  # greedy's others still wait
        for call in calls:
            call.cancel()
        for t in threads:
            t.join()
        for c in greedy:
            c.close()
    finally:
        server.stop()
