"""The server's lifecycle: listen at once with health NOT_SERVING, load and warm up the engine (its
decode loop on its own thread), flip health to SERVING, and on SIGTERM/SIGINT stop accepting,
drain in-flight streams within the grace period, stop the engine and exit."""

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from ledserve.engine.engine import Engine, EngineConfig
from ledserve.engine.errors import ArtifactError, EngineError
from ledserve.engine.extractive import Extractor, ExtractorConfig
from ledserve.manifest import EXTRACTIVE_QA, Manifest, ManifestError
from ledserve.proto.ledserve.v1 import ledserve_pb2
from ledserve.server.logs import log
from ledserve.server.metrics import Metrics
from ledserve.server.security import TokenAuth, server_credentials
from ledserve.server.service import LedServeService, add_to_server

SERVICE = ledserve_pb2.DESCRIPTOR.services_by_name["LedServe"].full_name  # "ledserve.v1.LedServe"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class ServerConfig:
    artifacts: Path | None
    """None: the embedded demo model, exported on first use once the port is open."""
    more_artifacts: tuple[Path, ...] = ()
    """Further artifacts folders, one per task at most: e.g. an extractive model's (Extract)
    beside the generative one."""
    host: str = "127.0.0.1"
    port: int = 50051
    """0 picks a free port."""
    device: str = "auto"
    engine: EngineConfig = field(default_factory=EngineConfig)
    extractor: ExtractorConfig = field(default_factory=ExtractorConfig)
    metrics_port: int | None = None
    """Prometheus /metrics on host:metrics_port; None: not exposed (0 picks a free port)."""
    grace_seconds: float = 30.0
    """How long in-flight requests may run on after SIGTERM before they are cancelled."""
    max_concurrent_rpcs: int = 1024
    """RPCs in progress (health checks included); past it gRPC answers RESOURCE_EXHAUSTED."""
    max_message_bytes: int = 16 << 20
    verify_artifacts: bool = True
    """Check every artifact file's sha256 at load (seconds for a large model)."""
    tls_cert: Path | None = None
    """PEM certificate chain: the port speaks TLS (with tls_key)."""
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    """PEM CA certificate: clients must present a certificate it signed (mutual TLS)."""
    auth_tokens: dict[str, str] | None = None
    """token -> client name (server/security.py read_tokens); every RPC but the health service's
    needs `authorization: Bearer TOKEN`."""
    reflection: bool = True
    max_requests_per_client: int | None = None
    """RPCs one client (token name, else peer host) may have in flight; None: no limit."""

    def __post_init__(self):
        if self.grace_seconds < 0 or self.max_concurrent_rpcs < 1 or self.max_message_bytes < 1:
            raise ValueError("grace_seconds >= 0, max_concurrent_rpcs >= 1, max_message_bytes >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS)")
        if self.max_requests_per_client is not None and self.max_requests_per_client < 1:
            raise ValueError(
                f"max_requests_per_client must be >= 1, got {self.max_requests_per_client}"
            )


class LedServer:
    def __init__(self, config: ServerConfig, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self.service = LedServeService(
            self.metrics, config.auth_tokens, config.max_requests_per_client
        )
        self.health = health_aio.HealthServicer()
        self.port = self.metrics_port = None
        self._grpc = self._metrics_http = None

    async def start(self) -> int:
        """Listen (health NOT_SERVING until `load` finishes); returns the bound port."""
        c = self.config
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
        ]
        interceptors = []
        if c.auth_tokens:
            refused = self.metrics.requests.labels
            interceptors.append(
                TokenAuth(c.auth_tokens, lambda m: refused(m, "UNAUTHENTICATED").inc())
            )
        self._grpc = grpc.aio.server(
            options=options,
            maximum_concurrent_rpcs=c.max_concurrent_rpcs,
            interceptors=interceptors,
        )
        add_to_server(self.service, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        if c.reflection:
            names = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
            reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), self._grpc)
        for name in ("", SERVICE):
            await self.health.set(name, NOT_SERVING)
        address = f"{c.host}:{c.port}"
        try:
            if c.tls_cert is not None:
                credentials = server_credentials(c.tls_cert, c.tls_key, c.tls_client_ca)
                self.port = self._grpc.add_secure_port(address, credentials)
            else:
                self.port = self._grpc.add_insecure_port(address)
        except RuntimeError as e:  # grpc's "Failed to bind"
            raise OSError(f"could not listen on {address} (in use?)") from e
        await self._grpc.start()
        if c.metrics_port is not None:
            self._metrics_http = self.metrics.serve_http(c.host, c.metrics_port)
            self.metrics_port = self._metrics_http.server_port
        log("server.listening", host=c.host, port=self.port, metrics_port=self.metrics_port,
            tls=c.tls_cert is not None, mutual_tls=c.tls_client_ca is not None,
            auth=bool(c.auth_tokens), reflection=c.reflection)  # fmt: skip
        return self.port

    async def load(self):
        """Load each artifacts folder (its task from its manifest), start the decode loop, run
        one warm-up request per model, then SERVING."""
        c = self.config
        artifacts = c.artifacts
        if artifacts is None:  # exporting the demo model takes seconds: health says NOT_SERVING
            from ledserve.demo.model import default_artifacts

            log("model.preparing_demo")
            artifacts = await asyncio.to_thread(default_artifacts)
        engine = extractor = None
        for folder in (artifacts, *c.more_artifacts):
            log("model.loading", artifacts=str(folder), device=c.device)
            try:
                task = Manifest.read(folder).task
            except ManifestError as e:
                raise ArtifactError(str(e)) from e
            if (extractor if task == EXTRACTIVE_QA else engine) is not None:
                raise ArtifactError(f"two artifacts folders serve {task}: give one per task")
            if task == EXTRACTIVE_QA:
                extractor = await asyncio.to_thread(
                    Extractor.from_artifacts, folder, c.device, c.verify_artifacts,
                    **vars(c.extractor),
                )  # fmt: skip
                await asyncio.to_thread(extractor.extract, "warm up?", "warm up.")
                continue
            engine = await asyncio.to_thread(
                Engine.from_artifacts, folder, c.device, c.verify_artifacts, **vars(c.engine)
            )
            engine.start()
            prompt = await asyncio.to_thread(engine.prompts.build, "warm up?", "warm up.")
            await asyncio.to_thread(
                engine.generate, [prompt.input_ids], [prompt.global_attention_mask],
                max_new_tokens=2,
            )  # fmt: skip
            self.metrics.watch(engine)
        self.service.engine, self.service.extractor = engine, extractor
        self.service.loaded = True
        for name in ("", SERVICE):
            await self.health.set(name, SERVING)
        device = engine.runtime.device_name if engine else extractor.device_name
        log("model.ready", device=device, tasks=[m.task for m in (engine, extractor) if m],
            **vars(c.engine))  # fmt: skip

    async def stop(self, grace: float | None = None):
        """Refuse new RPCs, let in-flight ones finish within `grace` seconds, then stop."""
        grace = self.config.grace_seconds if grace is None else grace
        log("server.draining", grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace)
        engine, self.service.engine = self.service.engine, None
        if engine is not None:
            engine.stop()
        extractor, self.service.extractor = self.service.extractor, None
        if extractor is not None:
            extractor.stop()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        log("server.stopped")


async def serve(config: ServerConfig) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit code."""
    server = LedServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except (OSError, ValueError) as e:  # a taken port, an unreadable certificate
        log("server.start_failed", logging.ERROR, message=str(e))
        return 2
    try:
        await server.load()
    except Exception as e:  # an expected refusal (EngineError) needs no traceback
        trace = None if isinstance(e, EngineError) else e
        log("model.load_failed", logging.ERROR, exc_info=trace, message=f"{type(e).__name__}: {e}")
        await server.stop(0)
        return 2
    await stop.wait()
    await server.stop()
    await _settle_tasks()
    return 0


async def _settle_tasks():
    """Cancel what gRPC left scheduled (an RPC's wait for its peer's close) and wait for it
    here, before asyncio.run closes the loop: a task cancelled there printed a raw traceback."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class BackgroundServer:
    """A LedServer on an event loop in a thread of its own (tests, benchmarks): listening when
    the constructor returns, and loaded (SERVING) unless `load` is False."""

    def __init__(self, config: ServerConfig, metrics: Metrics | None = None, load: bool = True):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server = LedServer(config, metrics)
        self.port = self._run(self.server.start())
        self.engine = self.extractor = None
        if load:
            self.load()

    def load(self):
        self._run(self.server.load())
        self.engine = self.server.service.engine
        self.extractor = self.server.service.extractor

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self, grace: float = 0):
        self._run(self.server.stop(grace))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
