"""The LedServe gRPC service: thin handlers over the engine. A request becomes one engine
submission; its events become chunks. Errors become status codes in `_status` and nowhere else;
clients never see a stack trace."""

import asyncio
import contextlib
import logging
import time
import uuid

import grpc

from ledserve.engine.detokenize import Detokenizer
from ledserve.engine.errors import CapacityExceeded, Failure, InvalidRequest, WrongTask
from ledserve.engine.extractive import ExtractParams
from ledserve.engine.stops import StopText
from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb
from ledserve.server import convert
from ledserve.server.events import EventSink, Mailbox
from ledserve.server.logs import log
from ledserve.server.metrics import Metrics
from ledserve.server.security import client_identity

DEADLINE_SLACK = 1.0  # seconds (see LedServeService._cancelled)


class NotReady(Exception):
    """The model is not loaded (yet), or the server is shutting down."""


class RequestFailed(Exception):
    """The engine ended the request without an answer: its kind, and a detail for the log."""

    def __init__(self, failure: Failure, detail: str):
        super().__init__(detail)
        self.failure = failure


def _status(error: Exception, request_id: str) -> tuple[grpc.StatusCode, str]:
    """The one mapping from errors to gRPC status codes and client-facing messages."""
    if isinstance(error, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, CapacityExceeded):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{error}; retry later"
    if isinstance(error, NotReady):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, WrongTask):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    if isinstance(error, RequestFailed) and error.failure is Failure.OUT_OF_MEMORY:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"request {request_id} ran out of memory on the server; retry later or send a "
            "shorter input"
        )
    if isinstance(error, RequestFailed) and error.failure is Failure.CANCELLED:
        return grpc.StatusCode.CANCELLED, f"request {request_id} was cancelled by the server"
    return grpc.StatusCode.INTERNAL, f"internal error in request {request_id}; see the server log"


class Unparsable:
    """A request body that did not parse (malformed protobuf, or a string that is not UTF-8): the
    handler refuses it with INVALID_ARGUMENT instead of gRPC's UNKNOWN."""

    request_id = ""

    def __init__(self, message_type, error: Exception):
        self.kind, self.error = message_type.DESCRIPTOR.full_name, error

    def refuse(self):
        raise InvalidRequest(
            f"the request body is not a valid {self.kind} (malformed protobuf, or a string "
            "field that is not UTF-8)"
        )


def _parser(message_type):
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except Exception as e:  # protobuf's DecodeError, among others
            return Unparsable(message_type, e)

    return parse


def add_to_server(service: "LedServeService", server):
    """Register the service, as the generated `add_LedServeServicer_to_server` does, with request
    parsing that lets a bad body reach the handler (and so the status mapping, logs and metrics)."""
    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            service.Generate,
            request_deserializer=_parser(pb.GenerateRequest),
            response_serializer=pb.GenerateChunk.SerializeToString,
        ),
        "GenerateAll": grpc.unary_unary_rpc_method_handler(
            service.GenerateAll,
            request_deserializer=_parser(pb.GenerateRequest),
            response_serializer=pb.GenerateResponse.SerializeToString,
        ),
        "DescribeModel": grpc.unary_unary_rpc_method_handler(
            service.DescribeModel,
            request_deserializer=_parser(pb.DescribeModelRequest),
            response_serializer=pb.ModelInfo.SerializeToString,
        ),
        "Extract": grpc.unary_unary_rpc_method_handler(
            service.Extract,
            request_deserializer=_parser(pb.ExtractRequest),
            response_serializer=pb.ExtractResponse.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["LedServe"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)


class LedServeService:
    def __init__(self, metrics: Metrics, tokens: dict[str, str] | None = None,
                 max_requests_per_client: int | None = None):  # fmt: skip
        self.metrics = metrics
        self.engine = None  # the generative engine, set once loaded and warmed up
        self.extractor = None  # the extractive engine (Extract), likewise
        self.loaded = False  # every model given is loaded: a missing one is a wrong task
        self.tokens, self.max_requests_per_client = tokens, max_requests_per_client
        self.in_flight: dict[str, int] = {}  # client identity -> its Generate / GenerateAll RPCs
        self._events: Mailbox | None = None  # the serving loop's

    def _mailbox(self) -> Mailbox:
        loop = asyncio.get_running_loop()
        if self._events is None or self._events.loop is not loop:
            self._events = Mailbox(loop)
        return self._events

    @contextlib.contextmanager
    def _client_slot(self, context):
        """One in-flight request of the calling client, within max_requests_per_client."""
        client = client_identity(context, self.tokens)
        held = self.in_flight.get(client, 0)
        limit = self.max_requests_per_client
        if limit is not None and held >= limit:
            raise CapacityExceeded(
                f"this client has {held} requests in flight; the limit is {limit} per client"
            )
        self.in_flight[client] = held + 1
        try:
            yield client
        finally:
            self.in_flight[client] -= 1
            if not self.in_flight[client]:
                del self.in_flight[client]

    def _engine(self):
        if self.engine is None and self.loaded:
            raise WrongTask(
                "this server has no generative model (it serves extractive-qa: call Extract)"
            )
        if self.engine is None:
            raise NotReady("the model is not loaded yet; watch the health service")
        return self.engine

    def _extractor(self):
        if self.extractor is None and self.loaded:
            raise WrongTask(
                "this server has no extractive model: start it with the artifacts of a Longformer "
                "question-answering checkpoint (ledserve serve --artifacts DIR, repeatable)"
            )
        if self.extractor is None:
            raise NotReady("the model is not loaded yet; watch the health service")
        return self.extractor

    async def Generate(self, request, context):
        request_id = request.request_id or uuid.uuid4().hex
        try:
            with self._client_slot(context) as client:
                async for chunk in self._chunks(request, request_id, client):
                    yield chunk
        except Exception as e:
            await self._abort("Generate", request_id, e, context)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            self._cancelled("Generate", request_id, context)
            raise
        self.metrics.requests.labels("Generate", "OK").inc()

    async def GenerateAll(self, request, context):
        request_id = request.request_id or uuid.uuid4().hex
        try:
            with self._client_slot(context) as client:
                async for chunk in self._chunks(request, request_id, client):
                    if chunk.HasField("summary"):
                        self.metrics.requests.labels("GenerateAll", "OK").inc()
                        text = chunk.summary.sequences[0].text
                        return pb.GenerateResponse(
                            request_id=request_id, text=text, summary=chunk.summary
                        )
        except Exception as e:
            await self._abort("GenerateAll", request_id, e, context)
        except asyncio.CancelledError:
            self._cancelled("GenerateAll", request_id, context)
            raise

    async def DescribeModel(self, request, context):
        try:
            if isinstance(request, Unparsable):
                request.refuse()
            if not self.loaded:
                raise NotReady("the model is not loaded yet; watch the health service")
            return convert.model_info(self.engine, self.extractor)
        except Exception as e:
            await self._abort("DescribeModel", "", e, context)

    async def Extract(self, request, context):
        request_id = getattr(request, "request_id", "") or uuid.uuid4().hex
        arrival = time.perf_counter()
        try:
            with self._client_slot(context) as client:
                if isinstance(request, Unparsable):
                    log("request.unparsable", request_id=request_id, detail=str(request.error))
                    request.refuse()
                extractor = self._extractor()
                question, passages = convert.document(request)
                params = ExtractParams(**convert.extract_parameters_to_kwargs(request.parameters))
                loop = asyncio.get_running_loop()
                done = loop.create_future()

                def on_done():  # on the extractor's thread
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

                # tokenizing a long document takes a while: off the event loop
                pending = await asyncio.to_thread(
                    extractor.prepare, question, passages, params, on_done
                )
                log("request.start", request_id=request_id, client=client, method="Extract",
                    windows=sum(len(j.windows) for j in pending.jobs),
                    parameters=vars(params))  # fmt: skip
                try:
                    await done
                finally:
                    extractor.cancel(pending)  # windows of an abandoned request are not run
                result = await asyncio.to_thread(extractor.finish, pending)
                seconds = time.perf_counter() - arrival
                log("request.done", request_id=request_id, method="Extract",
                    windows=result.windows, input_tokens=result.input_tokens,
                    answers=len(result.answers), total_seconds=round(seconds, 4))  # fmt: skip
                self.metrics.input_tokens.inc(result.input_tokens)
                self.metrics.extract_windows.inc(result.windows)
                self.metrics.extract_seconds.observe(seconds)
                self.metrics.requests.labels("Extract", "OK").inc()
                return convert.extraction(request_id, result, seconds)
        except Exception as e:
            await self._abort("Extract", request_id, e, context)
        except asyncio.CancelledError:
            self._cancelled("Extract", request_id, context)
            raise

    async def _chunks(self, request: pb.GenerateRequest, request_id: str, client: str):
        """Submit the request to the engine and yield its chunks, the summary last."""
        arrival = time.perf_counter()
        if isinstance(request, Unparsable):
            log("request.unparsable", request_id=request_id, detail=str(request.error))
            request.refuse()
        engine = self._engine()
        job = convert.request_input(request)
        params = convert.parameters_to_kwargs(request.parameters)
        ids, glob, truncated = job.input_ids, job.global_attention_mask, (0, 0)
        if job.question is not None:  # tokenizing 16k tokens takes a while: off the loop
            prompt = await asyncio.to_thread(
                engine.prompts.build, job.question, job.passages, job.truncate
            )
            ids, glob = prompt.input_ids, prompt.global_attention_mask
            truncated = prompt.truncated_context_tokens, prompt.truncated_context_characters
        sink = EventSink(self._mailbox())
        submitted = engine.submit(ids, glob, events=sink, client=client, **params)
        log(
            "request.start",
            request_id=request_id,
            client=client,
            input_tokens=len(ids),
            truncated_context_tokens=truncated[0],
            truncated_context_characters=truncated[1],
            parameters=params,
        )
        # text deltas: none holds a broken character, none reaches past a stop string
        detokenizer, held, last = (
            Detokenizer(engine.tokenizer),
            StopText(submitted.params.stop),
            None,
        )
        try:
            while True:
                event = await sink.get()
                if event.error:
                    raise RequestFailed(event.failure, event.error)
                text = held.add(detokenizer.add(event.tokens)) if event.tokens else ""
                scores = convert.token_scores(event.scores)
                if event.finished:
                    offset = submitted.times["submitted"] - arrival
                    summary = convert.summary(event, engine.tokenizer, len(ids), truncated, offset,
                                              submitted.stops)  # fmt: skip
                    self._observe(request_id, summary)
                    text += held.add(detokenizer.flush()) + held.flush()
                    yield pb.GenerateChunk(
                        request_id=request_id, text=text, token_ids=event.tokens,
                        summary=summary, scores=scores,
                    )  # fmt: skip
                    return
                now = time.perf_counter()
                if last is not None:
                    self.metrics.inter_token_seconds.observe((now - last) / len(event.tokens))
                last = now
                yield pb.GenerateChunk(request_id=request_id, text=text, token_ids=event.tokens,
                                       scores=scores)  # fmt: skip
        finally:
            engine.cancel(submitted)  # a no-op once finished; frees the rows of an abandoned one

    def _observe(self, request_id: str, summary: pb.Summary):
        m, usage, t = self.metrics, summary.usage, summary.timings
        m.input_tokens.inc(usage.input_tokens)
        m.generated_tokens.inc(usage.generated_tokens)
        m.truncated_tokens.inc(usage.truncated_context_tokens)
        m.queue_seconds.observe(t.queue_seconds)
        m.encode_seconds.observe(t.encode_seconds)
        m.first_token_seconds.observe(t.first_token_seconds)
        m.total_seconds.observe(t.total_seconds)
        log(
            "request.done",
            request_id=request_id,
            finish_reason=pb.FinishReason.Name(summary.finish_reason),
            input_tokens=usage.input_tokens,
            generated_tokens=usage.generated_tokens,
            truncated_context_tokens=usage.truncated_context_tokens,
            truncated_context_characters=usage.truncated_context_characters,
            queue_seconds=round(t.queue_seconds, 4),
            encode_seconds=round(t.encode_seconds, 4),
            first_token_seconds=round(t.first_token_seconds, 4),
            total_seconds=round(t.total_seconds, 4),
        )

    async def _abort(self, method: str, request_id: str, error: Exception, context):
        code, message = _status(error, request_id)
        self.metrics.requests.labels(method, code.name).inc()
        internal = code == grpc.StatusCode.INTERNAL
        log(
            "request.error",
            logging.ERROR if internal else logging.WARNING,
            # An engine failure's traceback stays in the engine; its detail is the message.
            exc_info=error if internal and not isinstance(error, RequestFailed) else None,
            request_id=request_id,
            method=method,
            code=code.name,
            message=str(error),
        )
        await context.abort(code, message)

    def _cancelled(self, method: str, request_id: str, context):
        # A client's deadline reaches the server as a cancellation that arrives before the
        # server's own copy of the deadline passes, by as long as the call took to reach the
        # handler (longer on a busy machine): within DEADLINE_SLACK of it counts as the deadline.
        # A deadline that passes before the handler starts never reaches this code.
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= DEADLINE_SLACK
        code = "DEADLINE_EXCEEDED" if expired else "CANCELLED"
        self.metrics.requests.labels(method, code).inc()
        log("request.cancelled", request_id=request_id, method=method, code=code)
