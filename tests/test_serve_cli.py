"""`ledserve serve / ask / demo` as a user runs them: context files (.txt, .md, .pdf), SIGTERM
draining a real server process, the end-to-end demo, and the generated stubs."""

import filecmp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2
from transformers import AutoTokenizer, LEDForConditionalGeneration

from ledserve.cli import main as ledserve
from ledserve.demo.model import DEMO_EXTRACTIVE, DEMO_MODEL, demo_example
from ledserve.demo.run import free_port
from ledserve.demo.tiny import corpus
from ledserve.demo.train import generate
from ledserve.server.client import Client
from ledserve.server.documents import read_document

ROOT = Path(__file__).parents[1]


def _write_pdf(path: Path, lines: list[str]):
    """A minimal one-page PDF with ASCII text lines in Helvetica."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) Tj T*" for line in lines)
    content += " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        "/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    path.write_bytes(out)


@pytest.mark.parametrize("suffix", [".txt", ".md", ".pdf"])
def test_ask_streams_the_answer_to_a_context_file(served, tmp_path, capsys, suffix):
    lines = [line.encode("ascii", "ignore").decode() for line in corpus(6, seed=11)]
    path = tmp_path / f"context{suffix}"
    if suffix == ".pdf":
        _write_pdf(path, lines)
    else:
        path.write_text("\n".join(lines), encoding="utf-8")
    text = read_document(path)
    assert [w for w in text.split()] == [w for line in lines for w in line.split()]
    question, target = "what is the price?", f"127.0.0.1:{served.port}"
    args = ["--max-new-tokens", "12", "--num-beams", "2"]
    command = ["ask", "--server", target, "--question", question, "--context-file", str(path)]
    assert ledserve([*command, *args]) == 0
    out = capsys.readouterr()
    with Client(target) as client:
        expected = client.generate(question, [text], max_new_tokens=12, num_beams=2).text
    assert out.out == expected + "\n"
    assert re.search(r"\[(stop|length): \d+ tokens from \d+ input tokens; first token", out.err)


def test_ask_passes_the_generation_flags(served, capsys):
    """The list-valued and new flags reach the server as the client's keyword arguments do."""
    target, question, context = f"127.0.0.1:{served.port}", "what?", "roses and tulips."
    flags = dict(max_length=14, min_new_tokens=10, suppress_tokens=[5, 6],
                 bad_words_ids=[[7], [8, 9]], begin_suppress_tokens=[10],
                 exponential_decay_length_penalty=(3, 1.2),
                 encoder_no_repeat_ngram_size=2, encoder_repetition_penalty=1.3,
                 renormalize_logits=True, output_scores=True, top_n_tokens=2)  # fmt: skip
    with Client(target) as client:
        plain = client.generate(question, context, **flags).text.strip()
        stop = plain[len(plain) // 2 : len(plain) // 2 + 2]
        expected = client.generate(question, context, stop=[stop], **flags)
    command = ["ask", "--server", target, "--question", question, "--context", context,
               "--max-length", "14", "--min-new-tokens", "10", "--suppress-tokens", "5,6",
               "--bad-words-ids", "7", "--bad-words-ids", "8,9", "--begin-suppress-tokens", "10",
               "--exponential-decay-length-penalty", "3,1.2", "--encoder-no-repeat-ngram-size",
               "2", "--encoder-repetition-penalty", "1.3", "--renormalize-logits",
               "--output-scores", "--top-n-tokens", "2", "--stop", stop]  # fmt: skip
    assert ledserve(command) == 0
    out = capsys.readouterr()
    assert out.out == expected.text + "\n"
    assert "[stop_sequence: " in out.err
    assert out.err.count("logprob") == len(expected.summary.sequences[0].token_ids)
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        ledserve([*command[:7], "--bad-words-ids", "7,x"])
    assert "expected comma-separated token ids" in capsys.readouterr().err


def test_ask_reports_errors_without_a_trace(served, tmp_path, capsys):
    target = f"127.0.0.1:{served.port}"
    assert ledserve(["ask", "--server", target, "--question", "q?", "--context", "c", 
                     "--num-beams", "99"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: num_beams must be between 1 and 8, got 99" in err
    assert "Traceback" not in err
    (tmp_path / "a.docx").write_bytes(b"x")
    (tmp_path / "b.txt").write_bytes(b"\xff\xfe bad")
    _write_pdf(tmp_path / "empty.pdf", [])
    for name, message in [
        ("a.docx", "unsupported file type; give a .txt, .md, .pdf file"),
        ("b.txt", "not UTF-8 text"),
        ("empty.pdf", "no text could be extracted"),
        ("missing.md", "no such file"),
    ]:
        command = ["ask", "--server", target, "--question", "q?", "--context-file"]
        assert ledserve([*command, str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err


_SLOW_SERVER = """
import sys, time
from ledserve.engine.runtime import Runtime

decode = Runtime.decode
Runtime.decode = lambda self, *a: (time.sleep(0.03), decode(self, *a))[1]
from ledserve.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_drains_an_in_flight_stream(served_model, tmp_path):
    port = free_port()
    command = [sys.executable, "-c", _SLOW_SERVER, "serve", "--artifacts", str(served_model[1]),
               "--port", str(port), "--device", "cpu", "--no-verify"]  # fmt: skip
    log = tmp_path / "server.log"
    with log.open("w") as stderr, subprocess.Popen(command, cwd=ROOT, stderr=stderr) as process:
        try:
            with Client(f"127.0.0.1:{port}") as client:
                client.wait_until_serving(timeout=120, alive=lambda: process.poll() is None)
                stream = client.stream("q?", "c.", min_new_tokens=40, max_new_tokens=40)
                first = next(stream)
                process.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while client.serving():  # health goes NOT_SERVING at once
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
                rest = list(stream)  # 40 tokens at 30 ms: most of them after the signal
            assert rest[-1].summary.usage.generated_tokens == 40
            assert len(first.token_ids) + sum(len(c.token_ids) for c in rest) == 40
            assert process.wait(timeout=60) == 0
        finally:
            process.kill()
    events = [line.split('"event": "')[1].split('"')[0] for line in log.read_text().splitlines()]
    drain = events.index("server.draining")
    assert "request.done" in events[drain:] and events[-1] == "server.stopped"
    with Client(f"127.0.0.1:{port}") as client, pytest.raises(grpc.RpcError) as gone:
        client.generate("q?", "c.", timeout=5)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


def _transformers_answer(example) -> str:
    """transformers' greedy answer with the shipped weights: what the demo must stream."""
    model = LEDForConditionalGeneration.from_pretrained(DEMO_MODEL).eval()
    tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL)
    tokens = generate(model, tokenizer, [example])
    return tokenizer.decode(tokens[0], skip_special_tokens=True).strip()


def _pipeline_span(example) -> str:
    """transformers' question-answering pipeline with the shipped extractive weights."""
    from transformers import LongformerForQuestionAnswering, pipeline

    model = LongformerForQuestionAnswering.from_pretrained(DEMO_EXTRACTIVE).eval()
    qa = pipeline("question-answering", model=model,
                  tokenizer=AutoTokenizer.from_pretrained(DEMO_EXTRACTIVE))  # fmt: skip
    return qa(question=example.question, context=example.context, max_seq_len=4096,
              handle_impossible_answer=True)["answer"]  # fmt: skip


def test_demo_streams_the_models_answer(tmp_path, capfd):
    assert ledserve(["demo", "--workdir", str(tmp_path)]) == 0
    out = capfd.readouterr()
    example = demo_example()
    answer = _transformers_answer(example)
    assert "validation passed" in out.err and "decoder.onnx" in out.err and "qa.onnx" in out.err
    assert f"[demo] question: {example.question}" in out.err
    streamed, extracted = out.out.strip().splitlines()
    assert streamed.strip() == answer  # the streamed answer
    span = _pipeline_span(example)  # the extractive model's answer, as the pipeline gives it
    assert extracted == (span or "(no answer)")
    verdict = "correct" if span == example.value else "wrong"
    assert f"[demo] expected span: {example.value} ({verdict})" in out.err
    assert answer == example.answer  # the shipped model answers the demo's question right
    assert f"[demo] expected: {example.answer} (correct)" in out.err
    assert re.search(r"\[stop: \d+ tokens from \d+ input tokens", out.err)
    assert "[demo] server stopped (exit status 0)" in out.err
    assert ledserve(["demo", "--workdir", str(tmp_path)]) == 0  # again: reuses the export
    assert "reusing the exported demo model" in capfd.readouterr().err


def _first_health_status(client, alive, timeout: float = 60):
    """The health service's first answer, polled from the process's start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            assert time.monotonic() < deadline and alive(), "the port never opened"
            time.sleep(0.05)


def test_serve_without_artifacts_serves_the_demo_model(tmp_path):
    """No --artifacts: the port opens at once (NOT_SERVING), then the embedded model is exported
    once into the user's cache (reused next time) and served."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    example = demo_example()
    for reuse in (False, True):
        port = free_port()
        command = [sys.executable, "-m", "ledserve", "serve", "--port", str(port)]
        log = tmp_path / "server.log"
        with log.open("w") as err, subprocess.Popen(command, cwd=ROOT, stderr=err, env=env) as p:
            try:
                with Client(f"127.0.0.1:{port}") as client:
                    if not reuse:  # the port opens first: health says NOT_SERVING meanwhile
                        status = _first_health_status(client, alive=lambda: p.poll() is None)
                        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
                        assert not list(tmp_path.glob("ledserve/demo-*/manifest.json"))
                    client.wait_until_serving(timeout=300, alive=lambda: p.poll() is None)
                    reply = client.generate(example.question, [example.context])
                    assert reply.text.strip() == _transformers_answer(example)
                p.send_signal(signal.SIGTERM)
                assert p.wait(timeout=60) == 0
            finally:
                p.kill()
        said = "reusing the exported" if reuse else "exporting the embedded"
        assert f"[ledserve] {said} demo model" in log.read_text()
    assert len(list(tmp_path.glob("ledserve/demo-*/manifest.json"))) == 1


def test_generated_stubs_are_current(tmp_path):
    """The build generates proto/**/_pb2*.py; an edited .proto needs `pip install -e .` again."""
    sys.path.insert(0, str(ROOT))
    try:
        import setup as build  # the project's setup.py
    finally:
        sys.path.pop(0)
    stubs = sorted(p.relative_to(ROOT) for p in ROOT.glob("proto/**/*_pb2*.py*"))
    assert len(stubs) == 3, "no generated stubs: run `pip install -e .`"
    build.generate_stubs(tmp_path)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*")) == stubs
    for stub in stubs:
        assert filecmp.cmp(ROOT / stub, tmp_path / stub, shallow=False), (
            f"{stub} is stale: run `pip install -e .` to regenerate it from its .proto"
        )


def test_serve_refuses_clearly(served, tmp_path):
    """A missing artifacts folder and a port in use: exit status 2, a message, no traceback."""
    for args, message in [
        (["--artifacts", str(tmp_path), "--port", "0"], "is not an artifacts folder"),
        (["--artifacts", str(tmp_path), "--port", str(served.port)], "could not listen on"),
    ]:
        run = subprocess.run(
            [sys.executable, "-m", "ledserve", "serve", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 2 and message in run.stderr and "traceback" not in run.stderr
