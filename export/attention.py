"""Export-friendly Longformer self-attention for the LED encoder.

Numerically the semantics of transformers' `LEDEncoderSelfAttention`, written so that every shape
comes from input shapes or from tensors (no Python branch on length or on "any global token"): one
traced ONNX graph serves every sequence length, batch size and global-attention pattern.
"""

from dataclasses import dataclass

import torch
from torch import nn

# Masked scores are *replaced* (torch.where), never added to, so fp16 conversion clamping this
# constant to -65504 still leaves a score whose exp() underflows to exactly 0.
MASKED = torch.finfo(torch.float32).min


@dataclass
class GlobalSlots:
    """Where the global tokens of each row are; computed once per encoder call, shared by layers.

    G is the largest number of global tokens in any row. There are G + 1 slots: the last one is
    never valid, so no tensor on the global path is ever zero-sized (a reshape cannot infer a -1
    dimension of a zero-size tensor, and G = 0 is the common case).
    """

    positions: torch.Tensor  # [batch, G + 1] int64: the j-th global token's position (if valid)
    valid: torch.Tensor  # [batch, G + 1] bool: slot j holds a global token of this row
    slot_of_position: torch.Tensor  # [batch, seq] int64: a global token's slot (junk for others)


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
    return GlobalSlots(
        positions=order.index_select(1, slots),
        valid=slots[None, :] < count[:, None],
        slot_of_position=cumulative.clamp(min=0),
    )


def band_mask(window: int, device=None) -> torch.Tensor:
    """[w, 3w] bool: query q of a block sees key k of its 3-block neighbourhood iff |i - j| <= w."""
    q = torch.arange(window, device=device)[:, None]
    k = torch.arange(3 * window, device=device)[None, :]
    return (k - window - q).abs() <= window


def neighbour_blocks(x: torch.Tensor, window: int, pad_end) -> torch.Tensor:
    """Blocks of `window` positions along dim 1 of x, each with its two neighbours.

    x: [batch, seq, ...] -> [batch, n_blocks, 3 * window, ...] where n_blocks = ceil(seq / window);
    positions outside [0, seq) are zero (or False). Three constant slices of a blocked view, so no
    index depends on the length.
    """
    padding = [0, 0] * (x.dim() - 2) + [window, window + pad_end]
    if x.dtype == torch.bool:
        padded = nn.functional.pad(x.to(torch.uint8), padding).bool()
    else:
        padded = nn.functional.pad(x, padding)
    blocks = padded.unflatten(1, (-1, window))  # [batch, n_blocks + 2, window, ...]
    return torch.cat([blocks[:, :-2], blocks[:, 1:-1], blocks[:, 2:]], dim=2)


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]"""
    return x.unflatten(-1, (num_heads, head_dim)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]"""
    return x.transpose(1, 2).flatten(2)


def longformer_self_attention(
    attn: nn.Module,
    hidden: torch.Tensor,
    is_pad: torch.Tensor,
    is_global: torch.Tensor,
    slots: GlobalSlots,
) -> torch.Tensor:
    """One LED encoder self-attention (before its output projection).

    attn: a transformers `LEDEncoderSelfAttention` (its weights and window are used, not its code).
    hidden: [batch, seq, d_model]; is_pad, is_global: [batch, seq] bool -> [batch, seq, d_model].
    Local tokens attend to keys within `window` positions that are neither padding nor global, plus
    every global key; global tokens attend to every non-padding key with the `*_global` projections;
    padding tokens get a zero output, as in transformers.
    """
    seq_len, d_model = hidden.shape[1:]
    heads, head_dim, window = attn.num_heads, attn.head_dim, attn.one_sided_attn_window_size
    scale = head_dim**-0.5
    pad_end = (window - seq_len % window) % window

    # query, key, value: [batch, heads, seq, head_dim]
    query = split_heads(attn.query(hidden) * scale, heads, head_dim)
    key = split_heads(attn.key(hidden), heads, head_dim)
    value = split_heads(attn.value(hidden), heads, head_dim)

    # Local part: each block of `window` queries against the 3 * window keys around it.
    q_blocks = nn.functional.pad(query, (0, 0, 0, pad_end)).unflatten(2, (-1, window))
    k_blocks = neighbour_blocks(key.transpose(1, 2), window, pad_end).permute(0, 3, 1, 2, 4)
    v_blocks = neighbour_blocks(value.transpose(1, 2), window, pad_end).permute(0, 3, 1, 2, 4)
    # q_blocks: [batch, heads, n_blocks, window, head_dim]; k/v_blocks: [..., 3 * window, head_dim]
    key_ok = neighbour_blocks(~(is_pad | is_global), window, pad_end)  # [batch, n_blocks, 3w]
    local_ok = key_ok[:, None, :, None, :] & band_mask(window, hidden.device)
    local_scores = torch.where(local_ok, q_blocks @ k_blocks.transpose(-1, -2), MASKED)

    # Global keys seen by every query: the `key`/`value` projections at the global positions.
    index = slots.positions[:, None, :, None].expand(-1, heads, -1, query.shape[-1])
    global_key = key.gather(2, index)[:, :, None]  # [batch, heads, 1, G, head_dim]
    global_value = value.gather(2, index)[:, :, None]
    global_scores = q_blocks @ global_key.transpose(-1, -2)  # [batch, heads, n_blocks, window, G]
    global_scores = torch.where(slots.valid[:, None, None, None, :], global_scores, MASKED)

    probs = torch.cat([global_scores, local_scores], dim=-1).softmax(dim=-1, dtype=torch.float32)
    probs = probs.to(hidden.dtype)
    local_out = probs[..., -3 * window :] @ v_blocks + probs[..., : -3 * window] @ global_value
    local_out = local_out.flatten(2, 3)[:, :, :seq_len]  # [batch, heads, seq, head_dim]
    local_out = merge_heads(local_out)  # [batch, seq, d_model]

    # Global queries attend to every non-padding key with the separate global projections.
    hidden_at_slots = hidden.gather(1, slots.positions[..., None].expand(-1, -1, d_model))
    global_query = split_heads(attn.query_global(hidden_at_slots) * scale, heads, head_dim)
    global_keys = split_heads(attn.key_global(hidden), heads, head_dim)  # [b, h, seq, hd]
    full_scores = global_query @ global_keys.transpose(-1, -2)  # [batch, heads, G, seq]
    full_scores = torch.where(is_pad[:, None, None, :], MASKED, full_scores)
    full_probs = full_scores.softmax(dim=-1, dtype=torch.float32).to(hidden.dtype)
    global_out = merge_heads(full_probs @ split_heads(attn.value_global(hidden), heads, head_dim))
    from_global = global_out.gather(1, slots.slot_of_position[..., None].expand(-1, -1, d_model))

    out = torch.where(is_global[..., None], from_global, local_out)
    return torch.where(is_pad[..., None], torch.zeros_like(out), out)
