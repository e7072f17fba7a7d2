"""Extractive QA: the Longformer span graph against transformers, and the Extractor's answers
against transformers' question-answering pipeline (same weights, same windows), alone and in
shared batches; its refusals; the Extract RPC."""

import random
import re
import threading

import grpc
import numpy as np
import pytest
from test_fuzz import ALLOWED, INTS, TEXTS, _pick
from transformers import AutoTokenizer, LongformerConfig, LongformerModel, pipeline

from ledserve.cli import main as ledserve
from ledserve.demo.tiny import build_random_longformer_qa, corpus
from ledserve.engine.engine import Engine
from ledserve.engine.errors import InvalidRequest, WrongTask
from ledserve.engine.extractive import Extractor
from ledserve.export.convert import ExportConfig, ExportError, export_model
from ledserve.manifest import EXTRACTIVE_QA, Manifest
from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb
from ledserve.server.app import BackgroundServer, ServerConfig
from ledserve.server.client import Client

# One-sided windows 6, 2, 3 (TINY_QA), and 5, 5 in a narrower model.
QA_CONFIGS = {
    "qa3": {},
    "qa2": dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=40,
                attention_window=[10, 10], max_position_embeddings=258),
}  # fmt: skip


@pytest.fixture(scope="session", params=sorted(QA_CONFIGS))
def qa_model(request, tmp_path_factory):
    """(checkpoint folder, fp32 artifacts folder, transformers pipeline on the same weights)."""
    folder = tmp_path_factory.mktemp(f"qa-{request.param}")
    model = build_random_longformer_qa(folder / "checkpoint", seed=5, **QA_CONFIGS[request.param])
    export_model(ExportConfig(model=str(folder / "checkpoint"), output=folder / "artifacts"))
    tokenizer = AutoTokenizer.from_pretrained(folder / "checkpoint")
    qa = pipeline("question-answering", model=model.eval(), tokenizer=tokenizer)
    return folder / "checkpoint", folder / "artifacts", qa


@pytest.fixture(scope="session")
def extractor(qa_model):
    return Engine.from_artifacts(qa_model[1], device="cpu")


def _question(rng: random.Random) -> str:
    return " ".join(corpus(1, seed=rng.randrange(10**6))[0].split()[: rng.randint(1, 8)])


def _context(rng: random.Random, lines: int) -> str:
    return " ".join(corpus(lines, seed=rng.randrange(10**6)))


def _spans(result) -> list[tuple[str, int, int]]:
    answers = result if isinstance(result, list) else [result]
    return [(a["answer"], a["start"], a["end"]) for a in answers]


def _assert_same(got, want):
    assert type(got) is type(want)  # a dict for one answer, a list otherwise, as the pipeline
    assert _spans(got) == _spans(want)
    listed = [x if isinstance(x, list) else [x] for x in (got, want)]
    for g, w in zip(*listed, strict=True):
        assert g["score"] == pytest.approx(w["score"], abs=1e-4)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_export_validates_the_span_graph(qa_model, tmp_path, dtype):
    manifest = export_model(
        ExportConfig(model=str(qa_model[0]), output=tmp_path / "a", dtype=dtype, validate=True)
    )
    assert manifest.task == EXTRACTIVE_QA and manifest.validation.passed
    assert {c.output for c in manifest.validation.checks} == {"start_logits", "end_logits"}
    assert Manifest.read(tmp_path / "a", verify=True).graphs.keys() == {"qa"}


def test_answers_equal_the_pipeline(qa_model, extractor, rng):
    """Fresh random questions and contexts, from a few tokens to several windows, random
    parameters: the same answers (text, start, end), scores within 1e-4."""
    rng = random.Random(int(rng.integers(2**32)))
    window = extractor.max_input
    for _ in range(10):
        params = dict(
            top_k=rng.choice([1, 2, 5]),
            max_answer_len=rng.choice([1, 4, 15]),
            handle_impossible_answer=rng.random() < 0.5,
            doc_stride=rng.choice([8, 24]),
            max_seq_len=rng.choice([48, 96, window]),
        )
        question, context = _question(rng), _context(rng, rng.choice([1, 5, 30, 70]))
        want = qa_model[2](question=question, context=context, **params)
        _assert_same(extractor.extract(question, context, **params), want)


def test_default_window_is_the_models_maximum(qa_model, extractor, rng):
    rng = random.Random(int(rng.integers(2**32)))
    question, context = _question(rng), _context(rng, 60)
    want = qa_model[2](question=question, context=context, max_seq_len=extractor.max_input)
    _assert_same(extractor.extract(question, context), want)


def test_requests_share_runs_and_each_equals_its_answer_alone(extractor, rng):
    rng = random.Random(int(rng.integers(2**32)))
    jobs = [(_question(rng), _context(rng, rng.choice([3, 40, 80]))) for _ in range(8)]
    alone = [extractor.extract(q, c, top_k=3, max_seq_len=64) for q, c in jobs]
    runs, windows = extractor.runs, extractor.windows_run
    together = [None] * len(jobs)

    def ask(i):
        together[i] = extractor.extract(*jobs[i], top_k=3, max_seq_len=64)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(together, alone, strict=True):
        _assert_same(got, want)
    assert extractor.runs - runs < extractor.windows_run - windows  # windows shared runs


def test_passages_answer_with_their_index(extractor, rng):
    rng = random.Random(int(rng.integers(2**32)))
    question, passages = _question(rng), [_context(rng, 4), _context(rng, 40)]
    result = extractor.extract_passages(question, passages, top_k=4, max_seq_len=64)
    for a in result.answers:
        alone = extractor.extract(question, passages[a.passage], top_k=4, max_seq_len=64)
        assert (a.text, a.start, a.end) in _spans(alone)
        assert passages[a.passage][a.start : a.end] == a.text
    assert result.no_answer_score == pytest.approx(
        min(extractor.extract_passages(question, [p], max_seq_len=64).no_answer_score
            for p in passages)
    )  # fmt: skip


@pytest.mark.parametrize(
    "question, context, params, message",
    [
        ("", "some text", {}, "question must not be empty"),
        ("what?", "  ", {}, "context must not be empty"),
        ("what?", "text", dict(top_k=0), "top_k must be between 1 and 100"),
        ("what?", "text", dict(max_answer_len=0), "max_answer_len must be between 1"),
        ("what?", "text", dict(max_seq_len=10**6), "max_seq_len must be between 1 and"),
        ("river " * 300, "text", dict(max_seq_len=64), r"question has \d+ tokens; .* at most 59 "),
        ("what?", "text", dict(max_seq_len=64, doc_stride=64), "doc_stride must be between 0"),
        ("what?", "text", dict(doc_stride=-1), "doc_stride must be between 0"),
    ],
)
def test_bad_requests_name_the_field_and_the_limit(extractor, question, context, params, message):
    with pytest.raises(InvalidRequest, match=message):
        extractor.extract(question, context, **params)


def test_tasks_are_told_apart(qa_model, exported, tmp_path):
    assert isinstance(Engine.from_artifacts(qa_model[1], device="cpu"), Extractor)
    with pytest.raises(WrongTask, match="generates answers"):
        Engine.from_artifacts(exported["fp32"], device="cpu").extract("q?", "context")
    plain = tmp_path / "longformer"
    LongformerModel(LongformerConfig(**{**QA_CONFIGS["qa2"], "vocab_size": 400})).save_pretrained(
        plain
    )
    AutoTokenizer.from_pretrained(qa_model[0]).save_pretrained(plain)
    with pytest.raises(ExportError, match="without a question-answering head"):
        export_model(ExportConfig(model=str(plain), output=tmp_path / "out"))


def test_extract_rpc(qa_model, served_model, extractor, rng, capsys):
    """A server with both models answers Extract as the engine does; one without an extractive
    model refuses it with FAILED_PRECONDITION, and one without a generative model Generate."""
    rng = random.Random(int(rng.integers(2**32)))
    both = ServerConfig(artifacts=served_model[1], more_artifacts=(qa_model[1],), port=0,
                        device="cpu")  # fmt: skip
    server = BackgroundServer(both)
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            info = client.describe()
            assert list(info.tasks) == ["generation", EXTRACTIVE_QA]
            assert info.extractive.max_seq_len == extractor.max_input
            question, passages = _question(rng), [_context(rng, 30), _context(rng, 3)]
            reply = client.extract(question, passages, top_k=3, handle_impossible_answer=True)
            want = extractor.extract_passages(question, passages, top_k=3,
                                              handle_impossible_answer=True)  # fmt: skip
            assert [(a.text, a.passage, a.start, a.end) for a in reply.answers] == [
                (a.text, a.passage, a.start, a.end) for a in want.answers
            ]
            assert reply.no_answer_score == pytest.approx(want.no_answer_score)
            with pytest.raises(grpc.RpcError) as bad:
                client.extract(question, passages, top_k=0)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "top_k must be between 1 and 100" in bad.value.details()
            assert client.generate("what?", "a context.", max_new_tokens=2).text is not None
        target = f"127.0.0.1:{server.port}"
        capsys.readouterr()
        contexts = [x for passage in passages for x in ("--context", passage)]
        command = ["ask", "--server", target, "--extractive", "--question", question,
                   "--answers", "3", *contexts]  # fmt: skip
        assert ledserve(command) == 0
        out = capsys.readouterr()
        want = extractor.extract_passages(question, passages, top_k=3)
        assert out.out.splitlines() == [a.text or "(no answer)" for a in want.answers]
        assert re.search(r"\[score [\d.]+, passage [01], characters \d+-\d+\]", out.err)
        assert "no-answer score" in out.err
    finally:
        server.stop()

    only_qa = BackgroundServer(ServerConfig(artifacts=qa_model[1], port=0, device="cpu"))
    try:
        with Client(f"127.0.0.1:{only_qa.port}") as client:
            assert list(client.describe().tasks) == [EXTRACTIVE_QA]
            with pytest.raises(grpc.RpcError) as wrong:
                client.generate("what?", "a context.")
            assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        only_qa.stop()


def test_extract_on_a_generative_server_is_failed_precondition(served):
    with Client(f"127.0.0.1:{served.port}") as client:
        with pytest.raises(grpc.RpcError) as wrong:
            client.extract("what?", "a context.")
    assert wrong.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no extractive model" in wrong.value.details()


def _random_extract(rng) -> pb.ExtractRequest:
    values = {}
    for field in pb.ExtractParameters.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue
        if field.type == field.TYPE_BOOL:
            values[field.name] = bool(rng.integers(2))
        else:
            values[field.name] = _pick(rng, [*INTS, 16, 100, 128, 500])
    passages = [_pick(rng, TEXTS) for _ in range(int(rng.integers(0, 3)))]
    return pb.ExtractRequest(
        request_id=_pick(rng, ["", "id-1", "x" * 200]),
        document=pb.Document(question=_pick(rng, TEXTS), passages=passages),
        parameters=pb.ExtractParameters(**values),
    )


def test_fuzzed_extract_requests_get_ok_or_a_refusal(qa_model):
    """Random and extreme values in every Extract field, and random bytes as bodies: OK or a
    refusal with a message, never INTERNAL or UNKNOWN; a normal request is answered the same
    afterwards."""
    rng = np.random.default_rng(0)
    server = BackgroundServer(ServerConfig(artifacts=qa_model[1], port=0, device="cpu"))
    try:
        with Client(f"127.0.0.1:{server.port}") as client:
            want = client.extract("where is the river?", "the river is in the city.")
            codes = {}
            for _ in range(80):
                try:
                    client.stub.Extract(_random_extract(rng), timeout=60)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                    assert code in ALLOWED and e.details() and "Traceback" not in e.details()
                codes[code.name] = codes.get(code.name, 0) + 1
            call = client.channel.unary_unary("/ledserve.v1.LedServe/Extract")
            for _ in range(20):
                try:
                    call(rng.bytes(int(rng.integers(1, 200))), timeout=60)
                except grpc.RpcError as e:
                    assert e.code() in ALLOWED, (e.code(), e.details())
            print(codes)
            assert codes.get("OK", 0) > 0 and codes.get("INVALID_ARGUMENT", 0) > 0
            again = client.extract("where is the river?", "the river is in the city.")
            assert (again.answers, again.no_answer_score) == (want.answers, want.no_answer_score)
    finally:
        server.stop()
