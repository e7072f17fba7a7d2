"""Export-friendly Longformer self-attention for the LED encoder.

Numerically the semantics of transformers' `LEDEncoderSelfAttention`, written so that every shape
comes from input shapes or from tensors (no Python branch on length or on "any global token"): one
traced ONNX graph serves every sequence length, batch size and global-attention pattern.
"""

from dataclasses import dataclass

import torch
from torch import nn

from ledserve.export.fused import additive_bias, merge_heads, multi_head_attention, split_heads

# Query blocks per attention window (see query_block). On the LED-base shape at 2048 tokens (CPU):
# 2 beat 1 (which scores a third more keys than needed); 4 and 8 were no faster.
BLOCKS_PER_WINDOW = 2


@dataclass
class GlobalSlots:
    """Where the global tokens of each row are; computed once per encoder call, shared by layers.

    G is the largest number of global tokens in any row. There are G + 1 slots: the last one is
    never valid, so no tensor on the global path is ever zero-sized (a reshape cannot infer a -1
    dimension of a zero-size tensor, and G = 0 is the common case).
    """

    positions: torch.Tensor  # [batch, G + 1] int64: the j-th global token's position (if valid)
    valid: torch.Tensor  # [batch, G + 1] bool: slot j holds a global token of this row
    # [batch, seq] int64: a global token's slot numbered across the batch, row * (G + 1) + its
    # slot in the row, as an output [batch, G + 1, d] flattened to [batch * (G + 1), d] holds it
    # (junk for other tokens)
    flat_slot_of_position: torch.Tensor


def global_slots(is_global: torch.Tensor) -> GlobalSlots:
    """Order positions globals-first (stable, by position) and keep the first G + 1 of each row."""
    positions = torch.arange(is_global.shape[1], device=is_global.device)  # [seq]
    count = is_global.sum(dim=1)  # [batch]
    # Globals sort by position, the others after them: keys are unique, so the order is stable.
    # One more column (position 0) so that G + 1 slots exist even when every token is global.
    sort_key = torch.where(is_global, positions, positions + is_global.shape[1]).float()
    order = nn.functional.pad(torch.argsort(sort_key, dim=1), (0, 1))  # [batch, seq + 1]
    slot_ids = torch.arange(is_global.shape[1] + 1, device=is_global.device)  # [seq + 1]
    slots = (slot_ids <= count.max()).nonzero().squeeze(1)  # [G + 1], size taken from a tensor
    cumulative = is_global.long().cumsum(dim=1) - 1
    rows = torch.arange(is_global.shape[0], device=is_global.device)  # [batch]
    return GlobalSlots(
        positions=order.index_select(1, slots),
        valid=slots[None, :] < count[:, None],
        flat_slot_of_position=rows[:, None] * (slots[-1:] + 1) + cumulative.clamp(min=0),
    )


def query_block(window: int) -> int:
    """Queries per block: a block of b queries scores the 2 * window + b keys around it (fewer in
    a short input), of which each query needs 2 * window + 1, so smaller blocks waste less; they
    also copy each key into more blocks. `window // BLOCKS_PER_WINDOW` when that divides the
    window, else the window."""
    return window // BLOCKS_PER_WINDOW if window % BLOCKS_PER_WINDOW == 0 else window


@dataclass
class LocalBlocks:
    """The local part's layout for one window; computed once per encoder call and window, shared
    by the layers with that window. Queries are cut into blocks of b = `query_block(window)`;
    each block attends to the G + 1 global slots, then to K consecutive positions that hold every
    key its queries may see: K = min(2 * window + b, padded length), so that an input shorter
    than the window scores its own length, not 2 * window + b mostly masked keys.
    """

    window: int
    block: int
    pad_end: int  # queries padded to a multiple of block
    key_index: torch.Tensor  # [n_blocks, G + 1 + K] int64: each block's keys in key_source()
    bias: torch.Tensor  # [batch * n_blocks, 1, b, G + 1 + K]: 0 or MASKED

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, seq, d] -> [batch, seq + pad_end, d]: zeros to a multiple of the block."""
        return nn.functional.pad(x, (0, 0, 0, self.pad_end))

    def key_source(self, padded: torch.Tensor, x_at_slots: torch.Tensor) -> torch.Tensor:
        """pad(x) and x at the global slots' positions [batch, G + 1, d] -> [batch,
        seq + pad_end + G + 1, d]: the rows that key_index numbers, so that one gather builds
        every block's keys."""
        return torch.cat([padded, x_at_slots], dim=1)


def local_blocks(is_pad, is_global, slots: GlobalSlots, window: int, dtype) -> LocalBlocks:
    """The layout and additive bias of the local part: 0 where a query may attend, MASKED
    elsewhere. A local key must be within `window` positions and neither padding nor global; a
    global slot must hold a global token."""
    block = query_block(window)
    seq_len = is_pad.shape[1]
    pad_end = (block - seq_len % block) % block
    device = is_pad.device
    # Sizes come from tensors (arange, slices), so the graph serves any length. Block j holds
    # queries j * b .. j * b + b - 1, which may see positions j * b - w .. j * b + b - 1 + w:
    # its K keys start there, moved inside 0 .. padded length - 1 at either end, where they
    # still cover every position that exists.
    padded = torch.arange(seq_len + pad_end, device=device)  # [Lp]
    starts = padded[::block]  # [n_blocks]: each block's first query
    within = torch.arange(block, device=device)  # [b]: a query's place in its block
    span = torch.arange(2 * window + block, device=device)[: seq_len + pad_end]  # [K]
    last = padded[-1:] - span[-1:]  # [1]: the last start whose K keys fit
    first_key = torch.minimum((starts - window).clamp(min=0), last)  # [n_blocks]
    local = first_key[:, None] + span  # [n, K]: positions
    slot = torch.arange(slots.positions.shape[1], device=device)  # [G + 1]
    # Global slots follow the padded sequence in key_source.
    key_index = torch.cat([seq_len + pad_end + slot + local[:, :1] * 0, local], dim=1)

    # Which keys exist, laid out like key_source: a position that is neither padding nor global
    # (nor beyond the sequence), then each global slot that holds a global token.
    allowed = nn.functional.pad((~(is_pad | is_global)).to(torch.uint8), (0, pad_end))
    allowed = torch.cat([allowed, slots.valid.to(torch.uint8)], dim=1).bool()
    key_ok = allowed[:, key_index]  # [batch, n_blocks, G + 1 + K]
    # Query i of block j and its key k are (first_key - start)[j] + k - i positions apart; the
    # band is compared per block against a [b, K] table, so no [n, b, K] integer tensor exists
    # (at 16k tokens it would take 168 MB).
    offset = span[None, :] - within[:, None]  # [b, K]: k - i
    shift = (first_key - starts)[:, None, None]  # [n, 1, 1]
    in_band = (offset >= -window - shift) & (offset <= window - shift)  # [n, b, K]
    # Every query sees every slot. Broadcast against tensors' values, not to a size: the tracer
    # freezes sizes (expand) and export folds data-free tensors (ones_like) into constants of
    # the traced shape.
    query = starts[:, None] + within  # [n, b]: positions
    any_slot = (slot[None, None, :] >= 0) & (query[:, :, None] >= 0)  # [n, b, G + 1]
    ok = key_ok[:, :, None, :] & torch.cat([any_slot, in_band], dim=2)  # [batch, n, b, keys]
    ok = ok.flatten(0, 1)[:, None]
    bias = additive_bias(ok, dtype)
    return LocalBlocks(window, block, pad_end, key_index, bias)


def longformer_self_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    is_pad: torch.Tensor,
    is_global: torch.Tensor,
    slots: GlobalSlots,
    blocks: LocalBlocks,
) -> torch.Tensor:
    """One LED encoder self-attention (before its output projection).

    attn: a transformers `LEDEncoderSelfAttention` (its weights and window are used, not its code).
    hidden: [batch, seq, d_model]; is_pad, is_global: [batch, seq] bool; blocks: `local_blocks`
    for this layer's window -> [batch, seq, d_model]. Local tokens attend to keys within `window`
    positions that are neither padding nor global, plus every global key; global tokens attend to
    every non-padding key with the `*_global` projections; padding tokens get a zero output, as in
    transformers.
    """
    batch, seq_len, d_model = hidden.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    scale = head_dim**-0.5

    # Local part: each block of queries against the global keys and the keys around it, as one
    # attention over [batch * n_blocks] rows; one gather builds each block's keys and values.
    # Queries, keys and values are projected from the padded hidden states (the keys and values
    # with the global slots' rows after them, as key_index reads them): one pad and one concat
    # a layer, not one for each projection.
    padded = blocks.pad(hidden)  # [batch, seq + pad_end, d_model]
    q_blocks = (attn.query(padded) * scale).unflatten(1, (-1, blocks.block))
    at_slots = slots.positions[..., None].expand(-1, -1, d_model)  # [batch, G + 1, d_model]
    hidden_at_slots = hidden.gather(1, at_slots)
    source = blocks.key_source(padded, hidden_at_slots)
    keys, values = [
        project(source)[:, blocks.key_index].flatten(0, 1) for project in (attn.key, attn.value)
    ]  # [batch * n_blocks, G + 1 + K, d_model]
    local_out = multi_head_attention(q_blocks.flatten(0, 1), keys, values, blocks.bias, heads)
    local_out = local_out.reshape(batch, -1, d_model)[:, :seq_len]  # [batch, seq, d_model]

    # Global queries (the G + 1 slots) attend to every non-padding key with the separate global
    # weights; the bias [batch, 1, G + 1, seq] comes from the padding.
    key_ok = ~is_pad[:, None, None, :] & (slots.positions[:, None, :, None] >= 0)
    query = attn.query_global(hidden_at_slots) * scale
    global_out = global_attention(attn, query, hidden, additive_bias(key_ok, hidden.dtype))
    # Each global token's row of global_out, gathered as whole rows (one index per position, not
    # one per element: at 16k tokens that index would take 96 MiB a layer).
    from_global = global_out.flatten(0, 1)[slots.flat_slot_of_position]
    out = torch.where(is_global[..., None], from_global, local_out)
    return torch.where(is_pad[..., None], torch.zeros_like(out), out)


def global_attention(attn: nn.Module, query, hidden, bias) -> torch.Tensor:
    """The global queries' attention over every non-padding key: query [batch, G + 1, d_model],
    scaled; hidden [batch, seq, d_model]; bias [batch, 1, G + 1, seq] -> [batch, G + 1, d_model].

    With few global tokens the keys and values are never projected (`_reassociated`); with
    more than `head_dim // 2` slots, where that would cost more, they are (`_projected`). Both
    paths are in the graph; the one not taken runs on one query slot and one key (junk, never
    selected), so no branch exists and no tensor is ever zero-sized.
    """
    slot = torch.arange(query.shape[1], device=query.device)  # [G + 1]
    few = slot[-1:] < attn.head_dim // 2  # [1]: G + 1 <= head_dim // 2
    position = torch.arange(hidden.shape[1], device=hidden.device)  # [seq]
    # Each path's query slots (all, or slot 0 alone) and the projected path's keys.
    mine = ((slot == 0) | few).nonzero().squeeze(1)
    theirs = ((slot == 0) | ~few).nonzero().squeeze(1)
    keys = ((position == 0) | ~few).nonzero().squeeze(1)
    cheap = _reassociated(attn, query[:, mine], hidden, bias[:, :, mine])
    projected = _projected(attn, query[:, theirs], hidden[:, keys], bias[:, :, theirs][..., keys])
    # [batch, G + 1, d_model] beside [batch, 1, d_model]: the taken path's output.
    return torch.where(few[:, None], cheap, projected)


def _reassociated(attn: nn.Module, query, hidden, bias) -> torch.Tensor:
    """A head's score q . (W_k x + b_k) is (W_k^T q) . x plus q . b_k, the same for every key,
    which softmax ignores; its output sum_j p_j (W_v x_j + b_v) is W_v (sum_j p_j x_j) + b_v. So
    the queries move into the input space (G + 1 rows a head) instead of the seq keys and
    values into each head's: 2 * seq * d_model^2 multiply-adds a layer become
    2 * heads * (G + 1) * seq * d_model."""
    w_key, w_value = _head_weights(attn)
    query = split_heads(query, attn.num_heads, attn.head_dim) @ w_key  # [b, heads, G + 1, d]
    scores = (query.flatten(1, 2) @ hidden.transpose(1, 2)).unflatten(1, (attn.num_heads, -1))
    probs = (scores + bias).softmax(dim=-1)  # [batch, heads, G + 1, seq]
    context = (probs.flatten(1, 2) @ hidden).unflatten(1, (attn.num_heads, -1))  # [.., d]
    out = (w_value @ context.transpose(2, 3)).transpose(2, 3)  # [batch, heads, G + 1, hd]
    return merge_heads(out) + attn.value_global.bias


def _projected(attn: nn.Module, query, hidden, bias) -> torch.Tensor:
    """Keys and values projected, as transformers does, then one fused attention node."""
    # From the same per-head weights as _reassociated, so that the graph holds them once (they
    # are the first operand of their MatMuls: int8 artifacts keep them fp32).
    w_key, w_value = _head_weights(attn)
    keys, values = [
        (w @ hidden.transpose(1, 2)[:, None] + b.reshape(attn.num_heads, -1, 1)).transpose(2, 3)
        for w, b in ((w_key, attn.key_global.bias), (w_value, attn.value_global.bias))
    ]  # [batch, heads, seq, head_dim]
    return multi_head_attention(query, keys, values, bias, attn.num_heads)


def _head_weights(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """key_global's and value_global's weights, [heads, head_dim, d_model] each."""
    shape = (attn.num_heads, attn.head_dim, -1)
    return attn.key_global.weight.reshape(shape), attn.value_global.weight.reshape(shape)
