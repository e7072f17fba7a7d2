"""Prometheus metrics: per-request counters and latency histograms observed by the service, and
the engine's queue depth, batch occupancy and decoder steps read at scrape time."""

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# Seconds: from a fast decode step to a long 16k-token request on a CPU.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter(
            "ledserve_requests",
            "Finished RPCs by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.input_tokens = Counter("ledserve_input_tokens", "Input tokens encoded", registry=r)
        self.generated_tokens = Counter(
            "ledserve_generated_tokens", "Tokens generated (first returned sequence)", registry=r
        )
        self.truncated_tokens = Counter(
            "ledserve_truncated_context_tokens", "Context tokens cut to fit the model", registry=r
        )

        def seconds(name, text):
            return Histogram(name, text, buckets=_BUCKETS, registry=r)

        self.queue_seconds = seconds("ledserve_queue_seconds", "Wait for a place in the batch")
        self.encode_seconds = seconds("ledserve_encode_seconds", "Encoder pass of a request")
        self.first_token_seconds = seconds(
            "ledserve_first_token_seconds", "Arrival to the first streamed token"
        )
        self.inter_token_seconds = seconds(
            "ledserve_inter_token_seconds", "Time between streamed chunks, per token"
        )
        self.total_seconds = seconds("ledserve_request_seconds", "Arrival to the last chunk")
        self.extract_windows = Counter(
            "ledserve_extract_windows", "Windows the Extract requests' passages were cut into",
            registry=r,
        )  # fmt: skip
        self.extract_seconds = seconds("ledserve_extract_seconds", "Arrival to an Extract answer")

    def watch(self, engine):
        self.registry.register(_EngineCollector(engine))

    def serve_http(self, host: str, port: int):
        """Expose /metrics; returns the HTTP server (shutdown() stops it)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


class _EngineCollector:
    def __init__(self, engine):
        self.engine = engine

    def collect(self):
        engine = self.engine
        running = list(engine.running)
        yield GaugeMetricFamily(
            "ledserve_queue_depth", "Requests waiting for admission", value=len(engine.waiting)
        )
        yield GaugeMetricFamily(
            "ledserve_running_requests", "Requests in the decode batch", value=len(running)
        )
        yield GaugeMetricFamily(
            "ledserve_encoding_requests",
            "Admitted requests whose input the encoder thread is encoding",
            value=len(engine.encoding),
        )
        yield GaugeMetricFamily(
            "ledserve_batch_rows",
            "Decoder rows (beams included) in the batch",
            value=sum(r.rows for r in running),
        )
        yield CounterMetricFamily(
            "ledserve_decoder_steps", "Engine steps that ran the decoder", value=engine.steps
        )
        yield CounterMetricFamily(
            "ledserve_draft_tokens", "Prompt lookup: tokens drafted and verified",
            value=engine.draft_tokens,
        )  # fmt: skip
        yield CounterMetricFamily(
            "ledserve_accepted_draft_tokens", "Prompt lookup: drafted tokens greedy kept",
            value=engine.accepted_draft_tokens,
        )  # fmt: skip
        yield CounterMetricFamily(
            "ledserve_decoder_rows",
            "Rows decoded, summed over steps (divided by steps: the mean batch size)",
            value=engine.decoder_rows,
        )
