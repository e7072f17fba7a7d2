"""encoder.onnx against transformers' LED encoder: lengths, padding, global patterns, dtypes."""

import onnx
import pytest
import torch

from ledserve.export.attention import global_slots, local_blocks, query_block
from ledserve.export.validate import compare, random_encoder_inputs, reference_encoder, session

PATTERNS = ["none", "first", "question", "random"]


def length_grid(model):
    """1, w-1, w, w+1, 3w+5 for every layer's window w, a few hundred, and the longest input
    transformers accepts (it pads to a multiple of the largest window within the positions)."""
    limit, largest = (
        model.config.max_encoder_position_embeddings,
        max(model.config.attention_window),
    )
    lengths = {300, limit - limit % largest}
    for window in set(model.config.attention_window):
        lengths |= {1, window - 1, window, window + 1, 3 * window + 5}
    return sorted(n for n in lengths if n >= 1)


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_encoder_matches_transformers(checkpoint, exported, dtype, rng):
    _, model = checkpoint
    encoder = session(exported[dtype] / "encoder.onnx")
    names = [o.name for o in encoder.get_outputs()]
    lengths = length_grid(model)
    cases = [([n], pattern) for n in lengths for pattern in PATTERNS]
    # Padded batches whose rows straddle window multiples, every pattern.
    for pattern in PATTERNS:
        cases.append((list(rng.choice(lengths, size=3)), pattern))
    for row_lengths, pattern in cases:
        inputs = random_encoder_inputs(rng, model.config.vocab_size, row_lengths, pattern)
        want = reference_encoder(model, inputs)
        got = dict(zip(names, encoder.run(None, inputs), strict=True))
        for name in names:
            check = compare(
                "encoder", name, f"{row_lengths} {pattern}", got[name], want[name], dtype
            )
            assert check.passed, check


def test_all_tokens_global_and_padding_rows(checkpoint, exported, rng):
    """Edge patterns: every token global; a row that is padding but for one token."""
    _, model = checkpoint
    encoder = session(exported["fp32"] / "encoder.onnx")
    names = [o.name for o in encoder.get_outputs()]
    inputs = random_encoder_inputs(rng, model.config.vocab_size, [17, 1], "none")
    inputs["global_attention_mask"][0, :] = 1
    inputs["global_attention_mask"][1, 5] = 1  # global flag on padding: ignored, as in transformers
    want = reference_encoder(model, inputs)
    got = dict(zip(names, encoder.run(None, inputs), strict=True))
    for name in names:
        check = compare("encoder", name, "edge", got[name], want[name], "fp32")
        assert check.passed, check


def test_global_slots_order_and_empty():
    is_global = torch.tensor([[0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    slots = global_slots(is_global)
    assert slots.positions.shape == (2, 4)  # G = 3, plus the slot that is never valid
    assert slots.positions[0, :3].tolist() == [1, 3, 4]
    assert slots.valid.tolist() == [[True, True, True, False], [False] * 4]
    assert slots.flat_slot_of_position[0].tolist()[1::2] == [0, 1]
    none = global_slots(torch.zeros(3, 7, dtype=torch.bool))
    assert none.positions.shape == (3, 1) and not none.valid.any()


def test_one_graph_serves_all_lengths(exported):
    """The sequence and batch axes are symbolic, not the traced sizes."""
    encoder = session(exported["fp32"] / "encoder.onnx")
    for value in encoder.get_inputs():
        assert value.shape == ["batch", "encoder_sequence"], value


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_attention_is_two_fused_nodes_per_layer(checkpoint, exported, dtype):
    """Scores, bias, softmax and the value product of the local part and of the projected global
    path run inside ONNX Runtime's MultiHeadAttention kernel, not as graph-level passes over
    [heads, seq, keys] tensors; the one Softmax a layer is the reassociated global path's, over
    its G + 1 query rows."""
    _, model = checkpoint
    graph = onnx.load(str(exported[dtype] / "encoder.onnx"), load_external_data=False).graph
    fused = [
        n for n in graph.node if (n.domain, n.op_type) == ("com.microsoft", "MultiHeadAttention")
    ]
    assert len(fused) == 2 * model.config.encoder_layers  # local and global parts
    softmax = [n for n in graph.node if n.op_type == "Softmax"]
    assert len(softmax) == model.config.encoder_layers


def test_global_paths_either_side_of_the_limit(checkpoint, exported, rng):
    """G + 1 global slots up to head_dim // 2 (the reassociated path), then past it (the
    projected one), in a padded batch whose rows differ in their number of global tokens."""
    _, model = checkpoint
    encoder = session(exported["fp32"] / "encoder.onnx")
    names = [o.name for o in encoder.get_outputs()]
    limit = model.config.d_model // model.config.encoder_attention_heads // 2
    lengths = [4 * limit + 9, 40]
    for globals_ in (limit - 1, limit, limit + 1, 3 * limit):
        inputs = random_encoder_inputs(rng, model.config.vocab_size, lengths, "none")
        for row, count in enumerate((globals_, 1)):  # within the row, never on its padding
            positions = rng.choice(lengths[row], count, replace=False)
            inputs["global_attention_mask"][row, positions] = 1
        want = reference_encoder(model, inputs)
        got = dict(zip(names, encoder.run(None, inputs), strict=True))
        for name in names:
            check = compare("encoder", name, f"G={globals_}", got[name], want[name], "fp32")
            assert check.passed, check


def test_query_blocks_and_their_keys():
    assert [query_block(w) for w in (6, 2, 3, 5, 512)] == [3, 1, 3, 5, 256]
    x = torch.arange(16)[None, :, None]  # [1, seq, 1]
    is_global = torch.zeros(1, 16, dtype=torch.bool)
    is_global[0, 7] = True
    slots = global_slots(is_global)
    layout = local_blocks(torch.zeros(1, 16, dtype=torch.bool), is_global, slots, 4, torch.float32)
    assert layout.block == 2
    at_slots = (x + 1).gather(1, slots.positions[..., None])
    blocks = layout.key_source(layout.pad(x + 1), at_slots)[:, layout.key_index]  # position + 1
    assert blocks.shape == (1, 8, 2 + 10, 1)  # G + 1 = 2 global slots, then 2w + b keys
    assert blocks[0, :, :2, 0].tolist() == [[8, 1]] * 8  # position 7, then the empty slot
    # Block j's keys start at 2j - 4, moved inside 0 .. 15 at the ends.
    firsts = [0, 0, 0, 2, 4, 6, 6, 6]
    for j, first in enumerate(firsts):
        assert blocks[0, j, 2:, 0].tolist() == list(range(first + 1, first + 11)), j
    allowed = layout.bias[:, 0] == 0  # [n_blocks, b, keys]
    assert allowed[:, :, 0].all() and not allowed[:, :, 1].any()  # the global token; empty slot
    for j, first in enumerate(firsts):
        for i in range(2):
            query = 2 * j + i
            seen = {first + k for k in range(10) if allowed[j, i, 2 + k]}
            assert seen == {p for p in range(16) if abs(p - query) <= 4 and p != 7}, (j, i)


def test_short_input_scores_only_its_own_keys():
    """An input shorter than 2w + b: every block's keys are the (padded) input, once."""
    is_pad = torch.tensor([[0, 0, 0, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    is_global = torch.zeros(2, 5, dtype=torch.bool)
    slots = global_slots(is_global)
    layout = local_blocks(is_pad, is_global, slots, 6, torch.float32)
    assert layout.block == 3 and layout.pad_end == 1
    assert layout.key_index[:, 1:].tolist() == [[0, 1, 2, 3, 4, 5]] * 2  # after the empty slot
    allowed = (layout.bias[:, 0] == 0)[:, :, 1:].reshape(2, 2, 3, 6)  # [batch, n, b, keys]
    assert allowed[0, :, :, :5].all() and not allowed[..., 5].any()  # position 5: beyond
    assert not allowed[1, :, :, 3:].any() and allowed[1, :, :, :3].all()  # padding
