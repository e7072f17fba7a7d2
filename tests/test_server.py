"""The gRPC server, through real gRPC clients on a loopback port: streaming and unary answers
(checked against transformers), concurrency, cancellation, deadlines, validation errors, limits,
health, reflection, metrics."""

import asyncio
import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from transformers import LEDForConditionalGeneration

from ledserve.demo.tiny import corpus
from ledserve.engine.engine import EngineConfig
from ledserve.engine.request import Event, TokenScore
from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb
from ledserve.proto.ledserve.v1 import ledserve_pb2_grpc
from ledserve.server.app import BackgroundServer, ServerConfig
from ledserve.server.client import Client
from ledserve.server.events import EventSink, Mailbox

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def client(served):
    with Client(f"127.0.0.1:{served.port}") as c:
        yield c


@pytest.fixture
def slow_decode(served, monkeypatch):
    """Each decoder run takes `seconds` longer, so that requests overlap for sure."""

    def slow(seconds: float, engine=served.engine):
        decode = engine.runtime.decode

        def delayed(*args, **kwargs):
            time.sleep(seconds)
            return decode(*args, **kwargs)

        monkeypatch.setattr(engine.runtime, "decode", delayed)

    return slow


def _document(rng_seed: int, lines: int) -> str:
    return " ".join(corpus(lines, seed=rng_seed))


def _wait_idle(engine, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while engine.running or engine.waiting or engine.encoding:
        assert time.monotonic() < deadline, "the engine still holds requests"
        time.sleep(0.01)


@pytest.mark.parametrize(
    "params",
    [
        dict(max_new_tokens=30),
        dict(max_new_tokens=20, num_beams=3, num_return_sequences=2, no_repeat_ngram_size=2),
        dict(max_new_tokens=25, do_sample=True, top_k=20, top_p=0.9, seed=7),
    ],
)
def test_stream_and_unary_give_the_same_answer_as_transformers(
    served, client, served_model, rng, params
):
    seed = int(rng.integers(1 << 30))
    question, document = (
        "what is the value of the river?",
        _document(seed, int(rng.integers(2, 30))),
    )
    chunks = list(client.stream(question, [document, "a second passage."], **params))
    whole = client.generate(question, [document, "a second passage."], **params)
    summary = chunks[-1].summary
    assert all(not c.HasField("summary") for c in chunks[:-1])
    assert "".join(c.text for c in chunks) == whole.text == summary.sequences[0].text
    assert [t for c in chunks for t in c.token_ids] == list(summary.sequences[0].token_ids)
    assert [list(s.token_ids) for s in summary.sequences] == [
        list(s.token_ids) for s in whole.summary.sequences
    ]
    assert len(summary.sequences) == params.get("num_return_sequences", 1)
    for chunk in chunks[:-1]:
        assert not chunk.text.endswith("\ufffd")  # a broken character is held back
    if params.get("do_sample"):
        return  # sampled tokens: same seed, same tokens (above); transformers draws differently
    prompt = served.engine.prompts.build(question, [document, "a second passage."])
    reference = LEDForConditionalGeneration.from_pretrained(served_model[0]).generate(
        torch.tensor([prompt.input_ids]),
        global_attention_mask=torch.tensor([prompt.global_attention_mask]),
        **params,
    )
    eos = served.engine.defaults["eos_token_id"]
    for sequence, expected in zip(summary.sequences, reference.tolist(), strict=True):
        tokens = [t for t in expected if t != served.engine.defaults["pad_token_id"]][1:]
        assert list(sequence.token_ids) == tokens
        stop = tokens[-1] == eos
        assert sequence.finish_reason == (pb.STOP if stop else pb.LENGTH)
    usage = summary.usage
    assert usage.input_tokens == len(prompt.input_ids) and usage.truncated_context_tokens == 0
    assert usage.generated_tokens == len(summary.sequences[0].token_ids)
    t = summary.timings
    assert 0 <= t.queue_seconds and 0 < t.encode_seconds <= t.first_token_seconds <= t.total_seconds


def test_token_input_and_model_description(served, client):
    info = client.describe()
    assert info.dtype == "fp32" and info.device == "cpu"
    assert info.max_input_tokens == 1024 and info.max_new_tokens == 63
    assert info.input_template == "question: {question} context: {context}"
    assert info.defaults.max_new_tokens == 19 and info.defaults.num_beams == 1
    ids = served.engine.prompts.build("where?", "in the garden.").input_ids
    glob = [1, 1, 1] + [0] * (len(ids) - 3)
    reply = client.generate(input_ids=ids, global_attention_mask=glob, max_new_tokens=5)
    assert reply.summary.usage.input_tokens == len(ids)
    expected = served.engine.generate([ids], [glob], max_new_tokens=5)[0][1:]
    assert list(reply.summary.sequences[0].token_ids) == expected


def test_over_long_context_is_cut_and_reported(served, client):
    document = _document(5, 400)  # far more than the model's 1024 tokens
    reply = client.generate("what is the first value?", document, max_new_tokens=3)
    usage = reply.summary.usage
    assert usage.input_tokens == 1024 and usage.truncated_context_tokens > 0
    with pytest.raises(grpc.RpcError) as refused:
        client.generate("what is the first value?", document, truncation="reject")
    assert refused.value.code() == INVALID
    over = r"input has \d+ tokens; the model.s maximum is 1024|context has \d+ characters; it can"
    assert re.search(over, refused.value.details())
    huge = (document + " ") * 200  # far beyond the character budget: its tail is never tokenized
    reply = client.generate("what is the first value?", huge, max_new_tokens=3)
    usage = reply.summary.usage
    assert usage.input_tokens == 1024 and usage.truncated_context_characters > len(document)


def test_concurrent_streams_share_decoder_steps(served, slow_decode):
    slow_decode(0.003)
    engine, start = served.engine, threading.Barrier(16)
    steps_before = engine.steps

    def one(i):
        with Client(f"127.0.0.1:{served.port}") as c:
            start.wait()
            chunks = list(c.stream(f"question {i}?", _document(i, 1 + i), min_new_tokens=30,
                                   max_new_tokens=30))  # fmt: skip
            return chunks[-1].summary

    with ThreadPoolExecutor(16) as pool:
        summaries = list(pool.map(one, range(16)))
    assert all(s.usage.generated_tokens == 30 and s.finish_reason == pb.LENGTH for s in summaries)
    steps = engine.steps - steps_before
    assert steps < 16 * 30 / 4, f"{steps} steps for 16 requests of 30 tokens: little sharing"


def _ended_streams(served, code: str) -> float:
    """Generate calls the server's metrics count as ended with `code`."""
    port = served.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    name = rf'ledserve_requests_total\{{code="{code}",method="Generate"\}}'
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _counted(served, code: str, before: float) -> bool:
    deadline = time.monotonic() + 10  # the handler counts it after the client has gone
    while _ended_streams(served, code) <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    return _ended_streams(served, code) == before + 1


def test_cancel_mid_stream_frees_the_slot(served, client, slow_decode):
    slow_decode(0.02)
    engine, steps_before = served.engine, served.engine.steps
    cancels, deadlines = (_ended_streams(served, c) for c in ("CANCELLED", "DEADLINE_EXCEEDED"))
    call = client.stream("a question?", "a context.", min_new_tokens=60, max_new_tokens=60)
    assert next(call).token_ids
    call.cancel()
    _wait_idle(engine)
    assert engine.steps - steps_before < 30  # stopped early, not after its 60 tokens
    assert _counted(served, "CANCELLED", cancels)  # a client's cancel, not its deadline
    assert _ended_streams(served, "DEADLINE_EXCEEDED") == deadlines


def test_deadline_ends_the_request(served, client, slow_decode):
    slow_decode(0.1)  # 60 tokens take 6 s, past the 2 s deadline
    engine, steps_before = served.engine, served.engine.steps
    cancels, deadlines = (_ended_streams(served, c) for c in ("CANCELLED", "DEADLINE_EXCEEDED"))
    call = client.stream("a question?", "a context.", min_new_tokens=60, max_new_tokens=60,
                         timeout=2.0)  # fmt: skip
    # The handler runs: a deadline that passes before it starts reaches no server code to count
    # it (one CI run on a loaded machine with a 0.3 s deadline counted neither code).
    assert next(call).token_ids
    with pytest.raises(grpc.RpcError) as ended:
        list(call)
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_idle(engine)
    assert engine.steps - steps_before < 40
    counted = _counted(served, "DEADLINE_EXCEEDED", deadlines)  # told from a cancel
    now = {c: _ended_streams(served, c) for c in ("DEADLINE_EXCEEDED", "CANCELLED")}
    assert counted, f"before: {deadlines} deadlines, {cancels} cancels; now {now}"
    assert _ended_streams(served, "CANCELLED") == cancels


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        (dict(question=" ", context="text"), r"question must not be empty"),
        (dict(max_new_tokens=500), r"max_new_tokens must be between 1 and 63, got 500"),
        (dict(num_beams=9), r"num_beams must be between 1 and 8, got 9"),
        (dict(temperature=-1.0), r"temperature must be between 0.01 and 100, got -1"),
        (dict(do_sample=True, temperature=1e-45), r"temperature must be between 0.01 and 100"),
        (dict(do_sample=True, temperature=float("inf")), r"temperature must be between"),
        (dict(repetition_penalty=1e-40), r"repetition_penalty must be between 0.01 and 100"),
        (dict(num_beams=2, length_penalty=1100.0), r"length_penalty must be between -10 and 10"),
        (dict(length_penalty=float("nan")), r"length_penalty must be between -10 and 10, got nan"),
        (dict(length_penalty=float("-inf")), r"length_penalty must be between -10 and 10"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (
            dict(num_beams=2, num_return_sequences=3),
            r"num_return_sequences must be between 1 and 2",
        ),
        (
            dict(input_ids=[5] * 1100),
            r"input has 1100 tokens; the model's maximum is 1024",
        ),
        (
            dict(input_ids=[0, 99999, 2]),
            r"input_ids holds 99999, outside the vocabulary \(0 to 399\)",
        ),
        (
            dict(input_ids=[0, 7, 2], global_attention_mask=[1]),
            r"global_attention_mask has 1 values",
        ),
        (dict(request_id="x" * 200), r"request_id has 200 characters; the limit is 128"),
        (
            dict(input_ids=[0] + [7] * 600 + [2], global_attention_mask=[1] * 602),
            r"global_attention_mask marks 602 tokens as global; the limit is 512",
        ),
        (dict(question="why " * 300, context="c"), r"marks \d+ tokens as global; the limit is 512"),
        (dict(min_p=1.5), r"min_p must be in \[0, 1\], got 1.5"),
        (dict(suppress_tokens=[3, -4]), r"suppress_tokens must hold token ids between 0 and 399"),
        (dict(bad_words_ids=[[5], [400]]), r"bad_words_ids must hold token ids between 0 and 399"),
        (dict(bad_words_ids=[[5], []]), r"bad_words_ids\[1\] must hold 1 to 32 token ids"),
        (dict(stop=["ok", ""]), r"stop\[1\] must be a string of 1 to 256 characters"),
        (dict(stop=["s"] * 17), r"stop must be a list of at most 16 strings"),
        (dict(top_n_tokens=50), r"top_n_tokens must be between 0 and 20, got 50"),
        (dict(max_length=5000), r"max_length must be between 2 and 64, got 5000"),
        (dict(typical_p=float("nan")), r"typical_p must be between 1e-06 and 1, got nan"),
        (
            dict(exponential_decay_length_penalty=(0, 1e10)),
            r"exponential_decay_length_penalty must be .* got \(0, 10000000000.0\)",
        ),
    ],
)
def test_bad_requests_are_invalid_argument(client, request_fields, message):
    fields = dict(request_fields)
    if "input_ids" not in fields:
        fields.setdefault("question", "what?")
        fields.setdefault("context", "text")
    with pytest.raises(grpc.RpcError) as refused:
        client.generate(**fields)
    assert refused.value.code() == INVALID
    assert re.search(message, refused.value.details()), refused.value.details()
    assert "Traceback" not in refused.value.details()
    assert client.generate("still there?", "yes.", max_new_tokens=2).summary.usage.generated_tokens


def test_raw_proto_errors_are_invalid_argument(client):
    for request, message in [
        (pb.GenerateRequest(), r"input: set document"),
        (
            pb.GenerateRequest(
                document=pb.Document(question="q?", passages=["c"]),
                parameters=pb.GenerationParameters(early_stopping=7),
            ),
            r"parameters.early_stopping: unknown value 7",
        ),
        (
            pb.GenerateRequest(document=pb.Document(question="q?"), truncation=5),
            r"truncation: unknown value 5",
        ),
    ]:
        for rpc in (client.stub.GenerateAll, lambda r: list(client.stub.Generate(r))):
            with pytest.raises(grpc.RpcError) as refused:
                rpc(request)
            assert refused.value.code() == INVALID
            assert re.search(message, refused.value.details())


def test_bodies_that_do_not_parse_are_invalid_argument(served, client):
    """Random bytes, and a string field holding invalid UTF-8, reach the handler and are refused
    like any other bad request (not gRPC's UNKNOWN), for every method; counted in the metrics."""
    channel = grpc.insecure_channel(f"127.0.0.1:{served.port}")
    invalid_utf8 = bytes([0x0A, 2, 0xC3, 0x28])  # field 1 (request_id), 2 bytes, not UTF-8
    before = served.server.metrics.requests.labels("GenerateAll", "INVALID_ARGUMENT")._value.get()
    for method in ("Generate", "GenerateAll", "DescribeModel"):
        # DescribeModelRequest has no fields: field 1 is an unknown one there, which parses.
        bodies = [b"\xff\xff\xff\xff"] + ([invalid_utf8] if method != "DescribeModel" else [])
        for body in bodies:
            call = f"/ledserve.v1.LedServe/{method}"
            rpc = channel.unary_stream(call) if method == "Generate" else channel.unary_unary(call)
            with pytest.raises(grpc.RpcError) as refused:
                result = rpc(body, timeout=10)
                if method == "Generate":
                    list(result)
            assert refused.value.code() == INVALID, (method, body, refused.value)
            assert "is not a valid ledserve.v1." in refused.value.details()
    after = served.server.metrics.requests.labels("GenerateAll", "INVALID_ARGUMENT")._value.get()
    assert after == before + 2
    channel.close()
    assert client.generate("still there?", "yes.", max_new_tokens=2).summary.usage.generated_tokens


def test_full_queue_is_resource_exhausted(served_model, monkeypatch):
    config = ServerConfig(
        artifacts=served_model[1],
        port=0,
        device="cpu",
        engine=EngineConfig(max_rows=1, max_queue=1),
    )
    server = BackgroundServer(config)
    decode = server.engine.runtime.decode
    monkeypatch.setattr(
        server.engine.runtime, "decode", lambda *a: (time.sleep(0.02), decode(*a))[1]
    )
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            running = client.stream("q?", "c.", min_new_tokens=40, max_new_tokens=40)
            next(running)
            waiting = client.stream("q?", "c.", max_new_tokens=2)
            deadline = time.monotonic() + 10
            while not server.engine.waiting:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as full:
                client.generate("q?", "c.", max_new_tokens=2)
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full (1 waiting requests); retry later" in full.value.details()
            assert list(running)[-1].summary.usage.generated_tokens == 40
            assert list(waiting)[-1].summary.usage.generated_tokens >= 1
    finally:
        server.stop()


def test_health_flips_to_serving_after_load(served_model):
    server = BackgroundServer(
        ServerConfig(artifacts=served_model[1], port=0, device="cpu"), load=False
    )
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            reply = client.health.Check(
                health_pb2.HealthCheckRequest(service="ledserve.v1.LedServe")
            )
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as early:
                client.generate("q?", "c.")
            assert early.value.code() == grpc.StatusCode.UNAVAILABLE
            server.load()
            assert client.serving()
            assert client.generate("q?", "c.", max_new_tokens=2).summary.usage.generated_tokens
    finally:
        server.stop()
    with Client(f"127.0.0.1:{server.port}") as client:
        assert not client.serving()


def test_reflection_describes_the_service(served):
    with grpc.insecure_channel(f"127.0.0.1:{served.port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"ledserve.v1.LedServe", "grpc.health.v1.Health"} <= services
        service = DescriptorPool(database).FindServiceByName("ledserve.v1.LedServe")
        generate = service.FindMethodByName("Generate")
        assert generate.server_streaming and not generate.client_streaming
        assert generate.input_type.full_name == "ledserve.v1.GenerateRequest"
        assert generate.output_type.full_name == "ledserve.v1.GenerateChunk"
        assert (
            "truncated_context_tokens"
            in generate.output_type.fields_by_name["summary"]
            .message_type.fields_by_name["usage"]
            .message_type.fields_by_name
        )


def test_metrics_endpoint(served, client):
    client.generate("a question?", "a context.", max_new_tokens=4, min_new_tokens=4)
    port = served.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()

    def value(name):
        match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        assert match, f"{name} missing"
        return float(match.group(1))

    assert value('ledserve_requests_total{code="OK",method="GenerateAll"}') >= 1
    assert value("ledserve_generated_tokens_total") >= 4
    assert value("ledserve_request_seconds_count") >= 1
    assert value("ledserve_decoder_steps_total") >= 4
    assert value("ledserve_decoder_rows_total") >= value("ledserve_decoder_steps_total")
    assert value("ledserve_queue_depth") == 0


def test_oversized_message_is_refused(served):
    big = pb.GenerateRequest(document=pb.Document(question="q?", passages=["x" * (17 << 20)]))
    options = [("grpc.max_send_message_length", 32 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{served.port}", options=options) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            ledserve_pb2_grpc.LedServeStub(channel).GenerateAll(big, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_failing_request_leaves_the_others_alone(served, client, slow_decode, monkeypatch):
    slow_decode(0.01)
    build = served.engine.prompts.build

    def broken(question, *args):
        if question == "boom?":
            raise RuntimeError("a bug")
        return build(question, *args)

    monkeypatch.setattr(served.engine.prompts, "build", broken)
    other = client.stream("q?", "c.", min_new_tokens=30, max_new_tokens=30)
    next(other)
    with pytest.raises(grpc.RpcError) as failed:
        client.generate("boom?", "c.")
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert re.fullmatch(
        r"internal error in request \w+; see the server log", failed.value.details()
    )
    assert list(other)[-1].summary.usage.generated_tokens == 30


@pytest.mark.parametrize(
    "raised, code, says",
    [
        (
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for "
            "requested buffer of size 123456",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            r"request \w+ ran out of memory on the server; retry later or send a shorter input",
        ),
        (
            "a secret detail",
            grpc.StatusCode.INTERNAL,
            r"internal error in request \w+; see the server log",
        ),
    ],
)
def test_engine_failures_map_to_their_status_without_the_detail(
    served, client, monkeypatch, raised, code, says
):
    """An encoder run that fails for lack of memory is RESOURCE_EXHAUSTED, any other failure
    INTERNAL; the exception's text reaches the log, never the client."""
    encode = served.engine.runtime.encode

    def failing_long_inputs(ids, mask, glob, **options):
        if ids.shape[1] > 150:
            raise RuntimeError(raised)
        return encode(ids, mask, glob, **options)

    monkeypatch.setattr(served.engine.runtime, "encode", failing_long_inputs)
    with pytest.raises(grpc.RpcError) as failed:
        client.generate("q?", _document(11, 60), max_new_tokens=2)
    assert failed.value.code() == code
    assert re.fullmatch(says, failed.value.details())
    assert client.generate("q?", "c.", max_new_tokens=2).summary.usage.generated_tokens


def test_stop_strings_and_scores_stream_as_they_answer(served, client):
    """A stop taken from the plain answer's text: streamed deltas concatenate to the unary text,
    which ends before the stop (STOP_SEQUENCE); streamed chunks carry their tokens' scores, which
    are the summary's."""
    params = dict(max_new_tokens=24, min_new_tokens=16, output_scores=True, top_n_tokens=2)
    plain = client.generate("what is it?", "a garden with roses and tulips.", **params)
    text = plain.text.strip()
    assert len(text) >= 4, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    unary = client.generate("what is it?", "a garden with roses and tulips.", stop=[stop], **params)
    chunks = list(client.stream("what is it?", "a garden with roses and tulips.", stop=[stop],
                                **params))  # fmt: skip
    summary = chunks[-1].summary
    assert unary.text == plain.text[: plain.text.find(stop)]
    assert "".join(c.text for c in chunks) == unary.text == summary.sequences[0].text
    assert summary.finish_reason == pb.STOP_SEQUENCE
    streamed = [s for c in chunks for s in c.scores]
    assert [t for c in chunks for t in c.token_ids] == list(summary.sequences[0].token_ids)
    assert streamed == list(summary.sequences[0].scores) and len(streamed) == len(
        summary.sequences[0].token_ids
    )
    assert all(len(s.top) == 2 and s.top[0].logprob >= s.logprob for s in streamed)
    beams = client.generate(
        "what?", "roses.", max_new_tokens=6, num_beams=3, num_return_sequences=2
    )
    assert all(s.HasField("sequence_score") for s in beams.summary.sequences)
    assert not plain.summary.sequences[0].HasField("sequence_score")


def test_described_defaults_hold_the_new_parameters(client):
    defaults = client.describe().defaults
    assert defaults.max_length == defaults.max_new_tokens + 1
    assert not defaults.output_scores and defaults.top_n_tokens == 0
    assert list(defaults.stop) == [] and not defaults.HasField("exponential_decay_length_penalty")


def test_events_reach_a_busy_loop_in_one_wake_up_and_merge():
    """Events put by the engine's thread while the event loop is busy: one wake-up delivers them
    all, and a stream that fell behind gets its waiting tokens (and their scores) as one event,
    in order, with its end after them; once the loop is closed, events are dropped."""

    async def main():
        loop, wakeups = asyncio.get_running_loop(), []
        schedule = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args: (wakeups.append(args), schedule(*args))[1]
        mailbox = Mailbox(loop)
        first, second = EventSink(mailbox), EventSink(mailbox)

        def steps():
            for k in range(3):
                first.put(Event(1, [10 + k], scores=[TokenScore(-k, [])]))
                second.put(Event(2, [20 + k]))
            first.put(Event(1, [13], finished=True, results=[[2, 10, 11, 12, 13]]))

        engine = threading.Thread(target=steps)
        engine.start()
        engine.join()  # the loop is blocked meanwhile: nothing was delivered yet
        assert len(wakeups) == 1
        merged = await first.get()
        assert merged.tokens == [10, 11, 12] and not merged.finished
        assert [s.logprob for s in merged.scores] == [0, -1, -2]
        end = await first.get()
        assert end.finished and end.tokens == [13] and end.results == [[2, 10, 11, 12, 13]]
        assert (await second.get()).tokens == [20, 21, 22]
        second.put(Event(2, [23]))  # the next step's events wake the loop again
        assert (await second.get()).tokens == [23] and len(wakeups) == 2
        return mailbox

    mailbox = asyncio.run(main())
    for _ in range(3):  # the loop is closed now: events are dropped, neither raised nor kept
        mailbox.put(asyncio.Queue(), Event(3, [1]))
    assert mailbox.pending == []
