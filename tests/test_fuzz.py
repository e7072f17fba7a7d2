"""Fuzzing the server's edge (bounded: a fixed number of calls, seconds in all): random and
extreme values in every field of the request messages, and random bytes as bodies. Every answer
is OK or a refusal with a message (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, OUT_OF_RANGE), never
INTERNAL or UNKNOWN, and the server answers a normal request identically afterwards."""

import math

import grpc
import numpy as np
import pytest

from ledserve.proto.ledserve.v1 import ledserve_pb2 as pb
from ledserve.server.client import Client

ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
INTS = [-(2**31), -1, 0, 1, 2, 3, 8, 9, 63, 64, 2**31 - 1]
FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, 1e-40, 1e-3, 0.5, 1.0, 2.0, 1100.0,
          1e308, -1.0]  # fmt: skip
TEXTS = ["", " ", "what?", "why not?", "ünïcödé ✓ 中文", "a" * 5000, "\x00\x01", "<s></s><pad>"]


def _pick(rng, pool):
    return pool[int(rng.integers(len(pool)))]


TYPICAL = {  # valid values, so that fuzzed calls also reach generation
    "max_new_tokens": (1, 8), "min_new_tokens": (0, 4), "num_beams": (1, 4),
    "length_penalty": (0.5, 2.0), "no_repeat_ngram_size": (0, 3),
    "repetition_penalty": (1.0, 1.5), "num_return_sequences": (1, 2), "temperature": (0.5, 1.5),
    "top_k": (0, 50), "top_p": (0.5, 1.0), "seed": (0, 2**32), "early_stopping": (0, 3),
    "prompt_lookup_num_tokens": (1, 6), "max_matching_ngram_size": (1, 3),
    "max_length": (2, 9), "encoder_no_repeat_ngram_size": (0, 3),
    "encoder_repetition_penalty": (0.8, 1.5), "min_p": (0.0, 0.3), "typical_p": (0.5, 1.0),
    "epsilon_cutoff": (0.0, 0.01), "eta_cutoff": (0.0, 0.01), "top_n_tokens": (0, 5),
}  # fmt: skip


def random_ids(rng, vocab: int) -> list[int]:
    ids = rng.integers(0, vocab, int(rng.integers(0, 4))).tolist()
    if ids and rng.random() < 0.2:
        ids[0] = _pick(rng, [-1, vocab, 2**62])
    return ids


def random_list_field(rng, name: str, vocab: int):
    """A value for a repeated or message field."""
    if name == "stop":
        return [_pick(rng, TEXTS) for _ in range(int(rng.choice([0, 1, 2, 20])))]
    if name == "bad_words_ids":
        return [pb.TokenIds(ids=random_ids(rng, vocab)) for _ in range(int(rng.integers(0, 3)))]
    if name == "exponential_decay_length_penalty":
        typical = rng.random() < 0.8
        return pb.DecayLengthPenalty(
            start_index=int(rng.integers(0, 6)) if typical else _pick(rng, INTS),
            decay_factor=float(rng.uniform(0.8, 1.3)) if typical else _pick(rng, FLOATS),
        )
    return random_ids(rng, vocab)  # suppress_tokens, begin_suppress_tokens


def random_parameters(rng, vocab: int = 100) -> pb.GenerationParameters:
    fields = {}
    for field in pb.GenerationParameters.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue  # unset: the model's default
        name, kind = field.name, field.type
        if field.is_repeated or kind == field.TYPE_MESSAGE:
            fields[name] = random_list_field(rng, name, vocab)
        elif kind == field.TYPE_BOOL:
            fields[name] = bool(rng.integers(2))
        elif rng.random() < 0.8:
            low, high = TYPICAL[name]
            double = kind == field.TYPE_DOUBLE
            fields[name] = float(rng.uniform(low, high)) if double else int(rng.integers(low, high))
        elif name == "early_stopping":
            fields[name] = int(rng.integers(4, 9))
        elif kind == field.TYPE_DOUBLE:
            fields[name] = _pick(rng, FLOATS)
        elif kind == field.TYPE_UINT64:
            fields[name] = _pick(rng, [0, 1, 2**63, 2**64 - 1])
        else:
            fields[name] = _pick(rng, INTS)
    if fields.get("max_new_tokens", 0) > 8:
        fields["max_new_tokens"] = 8  # valid calls stay short; the limits get their own values
    return pb.GenerationParameters(**fields)


def random_request(rng, vocab: int) -> pb.GenerateRequest:
    request = pb.GenerateRequest(
        request_id=_pick(rng, ["", "id-1", "id-2", "x" * 200]),
        parameters=random_parameters(rng, vocab),
        truncation=int(rng.integers(0, 4)),
    )
    if rng.random() < 0.5:
        passages = [_pick(rng, TEXTS) for _ in range(int(rng.integers(0, 3)))]
        request.document.CopyFrom(pb.Document(question=_pick(rng, TEXTS), passages=passages))
    elif rng.random() < 0.9:
        n = int(rng.integers(0, 40))
        ids = rng.integers(0, vocab, n).tolist()
        if n and rng.random() < 0.3:
            ids[int(rng.integers(n))] = _pick(rng, [-1, vocab, 2**62])
        glob = [] if rng.random() < 0.5 else rng.integers(0, 2, n).tolist()
        if glob and rng.random() < 0.3:
            glob[0] = _pick(rng, [2, -1])
        if rng.random() < 0.1:
            glob = [*glob, 1]
        request.tokens.CopyFrom(pb.TokenInput(input_ids=ids, global_attention_mask=glob))
    return request  # else: no input at all


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_requests_get_ok_or_a_refusal(served, seed):
    rng = np.random.default_rng(seed)
    vocab = served.engine.vocab_size
    with Client(f"127.0.0.1:{served.port}") as client:
        want = client.generate("still there?", "yes.", max_new_tokens=4).text
        codes = {}
        for _ in range(120):
            request = random_request(rng, vocab)
            try:
                client.stub.GenerateAll(request, timeout=60)
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
                assert code in ALLOWED, (request, code, e.details())
                assert e.details() and "Traceback" not in e.details()
            codes[code.name] = codes.get(code.name, 0) + 1
        channel = grpc.insecure_channel(f"127.0.0.1:{served.port}")
        call = channel.unary_unary("/ledserve.v1.LedServe/GenerateAll")
        for _ in range(30):
            body = rng.bytes(int(rng.integers(1, 200)))
            try:
                call(body, timeout=60)
                code = grpc.StatusCode.OK  # random bytes can be a valid message
            except grpc.RpcError as e:
                code = e.code()
                assert code in ALLOWED, (body, code, e.details())
            codes[code.name] = codes.get(code.name, 0) + 1
        channel.close()
        print(codes)
        assert codes.get("OK", 0) > 0 and codes.get("INVALID_ARGUMENT", 0) > 0
        assert client.generate("still there?", "yes.", max_new_tokens=4).text == want
