"""Attention as ONNX Runtime's fused `com.microsoft.MultiHeadAttention` node, for both graphs.

In torch (tests, validation, training) each function is the plain, differentiable formula; in an
ONNX export it becomes one node whose CPU and CUDA kernels take scores, bias, softmax and the
value product in one pass per (row, head), instead of five graph-level passes over the score
tensor and the reshapes and transposes around them. Queries come already scaled (scale 1.0), as
transformers scales them; masks come as an additive bias (0 or MASKED) of the full
[batch, 1, queries, keys] shape (ONNX Runtime broadcasts only its first two dimensions).
"""

import torch

# Masked scores are replaced by (torch.where) or added to (an attention bias) this constant. In
# fp32 a score plus it stays finite and its exp() is exactly 0. fp16 conversion clamps it to
# -65504 and a sum may become -inf: still exp() 0; a query with every key masked (an encoder
# padding query, a free cross-attention slot) may then get NaN, which no output keeps.
MASKED = torch.finfo(torch.float32).min


def additive_bias(ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask -> the attention bias of the same shape: 0 where a query may attend, MASKED
    elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=ok.device)
    return torch.where(ok, zero, torch.tensor(MASKED, dtype=dtype, device=ok.device))


def split_heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """[batch, seq, heads * head_dim] -> [batch, heads, seq, head_dim]"""
    return x.unflatten(-1, (num_heads, head_dim)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, heads, seq, head_dim] -> [batch, seq, heads * head_dim]"""
    return x.transpose(1, 2).flatten(2)


def multi_head_attention(q, k, v, bias, num_heads: int) -> torch.Tensor:
    """q [batch, q_len, heads * head_dim]; k, v [batch, k_len, heads * head_dim], or already
    split, [batch, heads, k_len, head_dim] (the decoder's cross-attention K/V); bias
    [batch, 1, q_len, k_len] -> like q."""
    if torch.onnx.is_in_onnx_export():
        return _Fused.apply(q, k, v, bias, num_heads, int(q.shape[-1]))
    return _formula(q, k, v, bias, num_heads)


def cached_attention(q, k, v, bias, past_key, past_value, num_heads: int):
    """Self-attention over a KV cache: q, k, v [batch, new, heads * head_dim] (this step's
    tokens); past_key, past_value [batch, heads, past, head_dim]; bias [batch, 1, new,
    past + new] -> (like q, present_key, present_value), the cache grown by this step's keys and
    values."""
    if torch.onnx.is_in_onnx_export():
        return _FusedCached.apply(q, k, v, bias, past_key, past_value, num_heads, int(q.shape[-1]))
    return _cached_formula(q, k, v, bias, past_key, past_value, num_heads)


def _formula(q, k, v, bias, num_heads: int) -> torch.Tensor:
    head_dim = q.shape[-1] // num_heads
    q = split_heads(q, num_heads, head_dim)
    k, v = (x if x.dim() == 4 else split_heads(x, num_heads, head_dim) for x in (k, v))
    probs = (q @ k.transpose(-1, -2) + bias).softmax(dim=-1, dtype=torch.float32)
    return merge_heads(probs.to(q.dtype) @ v)


def _cached_formula(q, k, v, bias, past_key, past_value, num_heads: int):
    head_dim = q.shape[-1] // num_heads
    key = torch.cat([past_key, split_heads(k, num_heads, head_dim)], dim=2)
    value = torch.cat([past_value, split_heads(v, num_heads, head_dim)], dim=2)
    return _formula(q, key, value, bias, num_heads), key, value


def _none(g):
    """An absent optional input (an empty name in the node)."""
    return g.op("prim::Constant").setType(torch._C.OptionalType.ofTensor())


def _typed(value, like, sizes):
    """The exporter cannot infer a contrib op's output shape: give it (None: dynamic), so that
    the graph's outputs keep their static dimensions (heads, head_dim, vocab)."""
    value.setType(like.type().with_sizes(sizes))
    return value


class _Fused(torch.autograd.Function):
    """`multi_head_attention` as the contrib op when exported (no backward)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, num_heads: int, hidden: int):
        return _formula(q, k, v, bias, num_heads)

    @staticmethod
    def symbolic(g, q, k, v, bias, num_heads: int, hidden: int):
        # Inputs 3 (packed QKV bias) and 4 (key padding mask) are absent.
        out = g.op(
            "com.microsoft::MultiHeadAttention",
            *(q, k, v, _none(g), _none(g), bias),
            num_heads_i=num_heads,
            scale_f=1.0,
        )
        return _typed(out, q, [None, None, hidden])


class _FusedCached(torch.autograd.Function):
    """`cached_attention` as the contrib op with past/present K/V when exported."""

    @staticmethod
    def forward(ctx, q, k, v, bias, past_key, past_value, num_heads: int, hidden: int):
        return _cached_formula(q, k, v, bias, past_key, past_value, num_heads)

    @staticmethod
    def symbolic(g, q, k, v, bias, past_key, past_value, num_heads: int, hidden: int):
        out, key, value = g.op(
            "com.microsoft::MultiHeadAttention",
            *(q, k, v, _none(g), _none(g), bias, past_key, past_value),
            num_heads_i=num_heads,
            scale_f=1.0,
            outputs=3,
        )
        cache = [None, num_heads, None, hidden // num_heads]
        return (
            _typed(out, q, [None, None, hidden]),
            _typed(key, past_key, cache),
            _typed(value, past_value, cache),
        )
