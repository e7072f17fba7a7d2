"""decoder.onnx: teacher-forced steps with the KV cache against transformers, and its batching
contract (empty cache slots, rows naming their request's cross K/V slot, several new tokens in
one step)."""

import numpy as np
import onnx
import pytest

from ledserve.export.validate import (
    compare,
    random_encoder_inputs,
    reference_decoder_logits,
    reference_encoder,
    run_decoder_steps,
    session,
)

STEPS = 20


def encoded(model, folder, rng, lengths, pattern="question"):
    """Encoder inputs and the ONNX encoder's outputs by name."""
    inputs = random_encoder_inputs(rng, model.config.vocab_size, lengths, pattern)
    encoder = session(folder / "encoder.onnx")
    names = [o.name for o in encoder.get_outputs()]
    return inputs, dict(zip(names, encoder.run(None, inputs), strict=True))


def teacher_tokens(model, rng, rows, steps=STEPS):
    tokens = rng.integers(5, model.config.vocab_size, (rows, steps))
    tokens[:, 0] = model.config.decoder_start_token_id
    return tokens


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_decoder_steps_match_transformers(checkpoint, exported, dtype, rng):
    _, model = checkpoint
    decoder = session(exported[dtype] / "decoder.onnx")
    for lengths in ([1], [37, 20], [13, 2, 40]):
        inputs, encoder_out = encoded(model, exported[dtype], rng, lengths)
        tokens = teacher_tokens(model, rng, len(lengths))
        want_hidden = reference_encoder(model, inputs)["last_hidden_state"]
        want = reference_decoder_logits(model, want_hidden, inputs["attention_mask"], tokens)
        got = run_decoder_steps(
            decoder, model.config, encoder_out, inputs["attention_mask"], tokens
        )
        check = compare("decoder", "logits", str(lengths), np.stack(got), np.stack(want), dtype)
        assert check.passed, check


def _empty_past(model, rows):
    config = model.config
    heads = config.decoder_attention_heads
    empty = np.zeros((rows, heads, 0, config.d_model // heads), np.float32)
    kinds = ("key", "value")
    return {f"past_key_values.{i}.{k}": empty for i in range(config.decoder_layers) for k in kinds}


def _cross(encoder_out, requests=slice(None)):
    return {k: v[requests] for k, v in encoder_out.items() if k.startswith("cross_key_values.")}


def _present_as_past(outputs, names):
    return {
        name.replace("present.", "past_key_values."): value
        for name, value in zip(names, outputs, strict=True)
        if name.startswith("present.")
    }


def test_multi_token_step_equals_single_steps(checkpoint, exported, rng):
    """Causal masking inside one call: 6 tokens at once give the logits of 6 cached steps."""
    _, model = checkpoint
    decoder = session(exported["fp32"] / "decoder.onnx")
    inputs, encoder_out = encoded(model, exported["fp32"], rng, [25, 9])
    tokens = teacher_tokens(model, rng, 2, 6)
    single = run_decoder_steps(decoder, model.config, encoder_out, inputs["attention_mask"], tokens)
    feed = {
        "input_ids": tokens,
        "attention_mask": np.ones_like(tokens),
        "encoder_attention_mask": inputs["attention_mask"],
        "request_rows": np.arange(2)[:, None],
        "row_slots": np.arange(2),
        **_empty_past(model, 2),
        **_cross(encoder_out),
    }
    together = decoder.run(None, feed)[0]
    check = compare("decoder", "logits", "6 at once", together, np.concatenate(single, 1), "fp32")
    assert check.passed, check


def test_empty_cache_slots_and_rows_naming_their_request(checkpoint, exported, rng):
    """Request A owns row 0, request B rows 3, 1, 2; their cross K/V sit in slots 2 and 0 with
    a free slot 1 (mask 0, random K/V) between them; row 0 joins two steps late behind empty
    cache slots. Each row gets the logits it gets when decoded alone."""
    _, model = checkpoint
    decoder = session(exported["fp32"] / "decoder.onnx")
    names = [o.name for o in decoder.get_outputs()]
    inputs, encoder_out = encoded(model, exported["fp32"], rng, [30, 11])
    request_of_row = [0, 1, 1, 1]  # encoder row of A, B
    steps, late = 5, 2
    tokens = teacher_tokens(model, rng, 4, steps)
    alone = []
    for row in range(4):
        request = slice(request_of_row[row], request_of_row[row] + 1)
        alone.append(
            run_decoder_steps(
                decoder,
                model.config,
                _cross(encoder_out, request),
                inputs["attention_mask"][request],
                tokens[row : row + 1],
            )
        )

    cross = _cross(encoder_out, [1, 0, 0])  # slots: B, free, A
    for value in cross.values():
        value[1] = rng.standard_normal(value[1].shape)
    encoder_mask = inputs["attention_mask"][[1, 0, 0]]
    encoder_mask[1] = 0
    request_rows = np.array([[3, 1, 2], [0, 0, 0], [0, 0, 0]])
    row_slots = np.array([6, 1, 2, 0])  # row 0: slot 2, first; row 3: slot 0, first; ...
    past, mask = _empty_past(model, 4), np.zeros((4, 0), np.int64)
    got = [[] for _ in range(4)]
    for step in range(steps + late):
        # Row 0 feeds its first token while still waiting, in a slot masked out below.
        positions = [max(step - late, 0), *[min(step, steps - 1)] * 3]
        mask = np.concatenate([mask, np.ones((4, 1), np.int64)], 1)
        mask[0, -1] = int(step >= late)
        feed = {
            "input_ids": tokens[np.arange(4), positions][:, None],
            "attention_mask": mask,
            "encoder_attention_mask": encoder_mask,
            "request_rows": request_rows,
            "row_slots": row_slots,
            **past,
            **cross,
        }
        outputs = decoder.run(None, feed)
        past = _present_as_past(outputs, names)
        for row in range(4):
            if (row == 0 and step >= late) or (row > 0 and step < steps):
                got[row].append(outputs[0][row : row + 1])
    for row in range(4):
        want, have = np.concatenate(alone[row], 1), np.concatenate(got[row], 1)
        check = compare("decoder", "logits", f"row {row}", have, want, "fp32")
        assert check.passed, check


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "int8"])
def test_attention_is_one_fused_node_each(checkpoint, exported, dtype):
    """Each layer's self-attention (with its past and present K/V) and cross-attention runs in
    ONNX Runtime's MultiHeadAttention kernel; no graph-level softmax or score tensors remain,
    and the outputs keep their static dimensions."""
    _, model = checkpoint
    config = model.config
    graph = onnx.load(str(exported[dtype] / "decoder.onnx"), load_external_data=False).graph
    fused = [
        n for n in graph.node if (n.domain, n.op_type) == ("com.microsoft", "MultiHeadAttention")
    ]
    assert len(fused) == 2 * config.decoder_layers
    assert sum(len(n.output) == 3 for n in fused) == config.decoder_layers  # past -> present
    assert not any(n.op_type == "Softmax" for n in graph.node)
    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
              for o in graph.output}  # fmt: skip
    heads = config.decoder_attention_heads
    assert shapes["logits"] == ["batch", "new_tokens", config.vocab_size]
    assert shapes["present.0.key"] == ["batch", heads, "total_tokens", config.d_model // heads]
