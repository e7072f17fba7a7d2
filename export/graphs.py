"""The two exported graphs as torch modules over a transformers LED, and their ONNX signatures.

`EncoderGraph`: token ids and masks -> last hidden state and every decoder layer's cross-attention
keys/values (computed once per request). `DecoderGraph`: one decoder step over the self-attention
KV cache and those cross keys/values -> fp32 logits and the grown cache. Both reuse the transformers
modules' weights; only the encoder self-attention's code is replaced (export/attention.py).
"""

from collections import OrderedDict

import torch
from optimum.exporters.onnx import OnnxConfig
from optimum.utils import NormalizedSeq2SeqConfig
from torch import nn

from ledserve.export.attention import global_slots, local_blocks, longformer_self_attention
from ledserve.export.fused import (
    additive_bias,
    cached_attention,
    multi_head_attention,
    split_heads,
)

# Tensor-name templates, written to the manifest; the engine reads them from there.
PAST_KEY, PAST_VALUE = "past_key_values.{layer}.key", "past_key_values.{layer}.value"
PRESENT_KEY, PRESENT_VALUE = "present.{layer}.key", "present.{layer}.value"
CROSS_KEY, CROSS_VALUE = "cross_key_values.{layer}.key", "cross_key_values.{layer}.value"


def _split(x: torch.Tensor, attn: nn.Module) -> torch.Tensor:
    """[batch, seq, d_model] -> [batch, heads, seq, head_dim] for a transformers attention."""
    return split_heads(x, attn.num_heads, attn.head_dim)


class EncoderGraph(nn.Module):
    """LED encoder + the decoder's cross-attention K/V projections, traceable for any shape."""

    def __init__(self, model):
        super().__init__()
        self.config = model.config
        self.encoder = model.get_encoder()
        self.decoder_layers = model.get_decoder().layers

    def forward(self, input_ids, attention_mask, global_attention_mask):
        """input_ids, attention_mask, global_attention_mask: [batch, seq] int64."""
        hidden = self.hidden_states(input_ids, attention_mask, global_attention_mask)
        cross = []
        for layer in self.decoder_layers:
            attn = layer.encoder_attn
            cross.append(_split(attn.k_proj(hidden), attn))  # [batch, heads, seq, head_dim]
            cross.append(_split(attn.v_proj(hidden), attn))
        return (hidden, *cross)

    def hidden_states(self, input_ids, attention_mask, global_attention_mask):
        """The encoder alone: [batch, seq] int64 inputs -> [batch, seq, d_model]."""
        encoder = self.encoder
        is_pad = attention_mask == 0
        is_global = (global_attention_mask != 0) & ~is_pad  # padding is never global
        slots = global_slots(is_global)

        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = encoder.embed_tokens(input_ids) + encoder.embed_positions.weight[positions]
        hidden = encoder.layernorm_embedding(hidden)  # [batch, seq, d_model]
        layouts = {}  # window -> local_blocks, shared by the layers with that window
        for layer in encoder.layers:
            attn = layer.self_attn
            window = attn.longformer_self_attn.one_sided_attn_window_size
            if window not in layouts:
                layouts[window] = local_blocks(is_pad, is_global, slots, window, hidden.dtype)
            attended = longformer_self_attention(
                attn.longformer_self_attn, hidden, is_pad, is_global, slots, layouts[window]
            )
            hidden = layer.self_attn_layer_norm(hidden + attn.output(attended))
            ffn = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
            hidden = layer.final_layer_norm(hidden + ffn)
        return hidden


class DecoderGraph(nn.Module):
    """One LED decoder step with a self-attention KV cache and precomputed cross-attention K/V.

    Cross K/V come once per request (a request slot); rows say which request they belong to
    through two small index inputs, so beams and returned sequences never copy their request's
    cross K/V and one run serves requests of any number of rows, in any row order:
    `request_rows` [requests, width] lists each slot's rows (a slot with fewer rows repeats one of
    them, a free slot any row), `row_slots` [batch] each row's place in that list, flattened
    (slot * width + i). Cross-attention runs per slot over `width` gathered queries.
    """

    def __init__(self, model):
        super().__init__()
        self.config = model.config
        self.decoder = model.get_decoder()
        self.lm_head = model.lm_head
        self.register_buffer("final_logits_bias", model.final_logits_bias, persistent=False)

    def forward(
        self,
        input_ids,
        attention_mask,
        encoder_attention_mask,
        request_rows,
        row_slots,
        past_key_values,
        cross_key_values,
    ):
        """input_ids: [batch, new] int64; attention_mask: [batch, past + new] int64 (0 = empty
        cache slot); encoder_attention_mask: [requests, enc_seq] int64 (a free slot: all 0);
        request_rows: [requests, width] int64; row_slots: [batch] int64; past_key_values: flat
        (key, value) per layer, [batch, heads, past, head_dim]; cross_key_values: flat (key, value)
        per layer, [requests, heads, enc_seq, head_dim]."""
        decoder = self.decoder
        batch, new = input_ids.shape
        valid = attention_mask != 0
        # A row's position counts its own tokens only, so rows with empty cache slots line up.
        positions = valid.long().cumsum(dim=1)[:, -new:] - 1  # [batch, new]
        # With tied embeddings the graph holds one copy of the vocab x d_model matrix, transposed
        # for the logits MatMul (constant folding would otherwise store a transposed second copy).
        tied = self.lm_head.weight is decoder.embed_tokens.weight
        out_weight = self.lm_head.weight.t()  # [d_model, vocab]
        if tied:
            embeds = out_weight.index_select(1, input_ids.flatten()).t().reshape(batch, new, -1)
        else:
            embeds = decoder.embed_tokens(input_ids)
        hidden = embeds + decoder.embed_positions.weight[positions]
        hidden = decoder.layernorm_embedding(hidden)  # [batch, new, d_model]

        # Token t may see every valid cache slot and the new tokens up to itself; a request's
        # rows see its valid encoder positions. Additive biases, computed once for all layers.
        requests, width = request_rows.shape
        total = attention_mask.shape[1]
        key_pos = torch.arange(total, device=input_ids.device)
        query_pos = key_pos[-new:]
        self_ok = valid[:, None, None, :] & (key_pos[None, :] <= query_pos[:, None])
        queries = torch.arange(width * new, device=input_ids.device)  # a slot's query rows
        cross_ok = (encoder_attention_mask != 0)[:, None, None, :] & (queries[:, None] >= 0)
        self_bias = additive_bias(self_ok, hidden.dtype)  # [batch, 1, new, past + new]
        cross_bias = additive_bias(cross_ok, hidden.dtype)  # [requests, 1, width * new, enc_seq]

        present = []
        for i, layer in enumerate(decoder.layers):
            attn = layer.self_attn
            query = attn.q_proj(hidden) * attn.scaling
            out, key, value = cached_attention(
                query, attn.k_proj(hidden), attn.v_proj(hidden), self_bias,
                past_key_values[2 * i], past_key_values[2 * i + 1], attn.num_heads,
            )  # fmt: skip
            present += [key, value]  # [batch, heads, past + new, head_dim]
            hidden = layer.self_attn_layer_norm(hidden + attn.out_proj(out))

            attn = layer.encoder_attn
            # [batch, new, d] -> [requests, width * new, d]: a request's rows become query rows.
            query = attn.q_proj(hidden) * attn.scaling
            query = query.index_select(0, request_rows.flatten()).reshape(requests, width * new, -1)
            out = multi_head_attention(
                query, cross_key_values[2 * i], cross_key_values[2 * i + 1], cross_bias,
                attn.num_heads,
            )  # fmt: skip
            out = out.reshape(requests * width, new, -1).index_select(0, row_slots)
            hidden = layer.encoder_attn_layer_norm(hidden + attn.out_proj(out))

            ffn = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
            hidden = layer.final_layer_norm(hidden + ffn)

        logits = hidden @ out_weight + self.final_logits_bias.to(hidden.dtype)
        return (logits.float(), *present)


class _GraphOnnxConfig(OnnxConfig):
    """Signatures for optimum's exporter: dynamic axes, input order, dummy inputs for tracing."""

    NORMALIZED_CONFIG_CLASS = NormalizedSeq2SeqConfig
    DEFAULT_ONNX_OPSET = 17

    def _layer_names(self, templates, axes):
        layers = self._config.decoder_layers
        return OrderedDict((t.format(layer=i), axes) for i in range(layers) for t in templates)

    def _head_dim(self):
        return self._config.d_model // self._config.decoder_attention_heads


class EncoderOnnxConfig(_GraphOnnxConfig):
    FP32_OUTPUTS = ("last_hidden_state",)  # stays fp32 in fp16 artifacts

    @property
    def inputs(self):
        axes = {0: "batch", 1: "encoder_sequence"}
        return OrderedDict(
            (n, axes) for n in ("input_ids", "attention_mask", "global_attention_mask")
        )

    @property
    def outputs(self):
        out = OrderedDict(last_hidden_state={0: "batch", 1: "encoder_sequence"})
        out.update(self._layer_names((CROSS_KEY, CROSS_VALUE), {0: "batch", 2: "encoder_sequence"}))
        return out

    def generate_dummy_inputs(self, framework="pt", **kwargs):
        # Traced at a length that is no multiple of any window, with padding and global tokens;
        # nothing in the graph branches on these values (tests run it at many others).
        batch, seq = 2, 3 * max(self._config.attention_window) + 5
        input_ids = torch.randint(3, self._config.vocab_size, (batch, seq))
        attention_mask = torch.ones(batch, seq, dtype=torch.int64)
        attention_mask[1, seq - 3 :] = 0
        global_attention_mask = torch.zeros(batch, seq, dtype=torch.int64)
        global_attention_mask[:, 0] = 1
        global_attention_mask[0, 5] = 1
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
        )


class DecoderOnnxConfig(_GraphOnnxConfig):
    FP32_OUTPUTS = ("logits",)  # stays fp32 in fp16 artifacts

    @property
    def inputs(self):
        out = OrderedDict(
            input_ids={0: "batch", 1: "new_tokens"},
            attention_mask={0: "batch", 1: "total_tokens"},
            encoder_attention_mask={0: "requests", 1: "encoder_sequence"},
            request_rows={0: "requests", 1: "width"},
            row_slots={0: "batch"},
        )
        out.update(self._layer_names((PAST_KEY, PAST_VALUE), {0: "batch", 2: "past_tokens"}))
        cross_axes = {0: "requests", 2: "encoder_sequence"}
        out.update(self._layer_names((CROSS_KEY, CROSS_VALUE), cross_axes))
        return out

    @property
    def outputs(self):
        out = OrderedDict(logits={0: "batch", 1: "new_tokens"})
        out.update(self._layer_names((PRESENT_KEY, PRESENT_VALUE), {0: "batch", 2: "total_tokens"}))
        return out

    def generate_dummy_inputs(self, framework="pt", **kwargs):
        config = self._config
        # Three slots: rows 3, 0, 1 (three beams), row 2 alone, and a free slot.
        requests, batch, new, past, enc_seq = 3, 4, 2, 3, 7
        heads = config.decoder_attention_heads
        kv = lambda rows, length: torch.randn(rows, heads, length, self._head_dim())  # noqa: E731
        attention_mask = torch.ones(batch, past + new, dtype=torch.int64)
        attention_mask[0, 0] = 0
        encoder_attention_mask = torch.ones(requests, enc_seq, dtype=torch.int64)
        encoder_attention_mask[1, -2:] = 0
        encoder_attention_mask[2] = 0
        request_rows = torch.tensor([[3, 0, 1], [2, 2, 2], [0, 0, 0]])
        row_slots = torch.tensor([1, 2, 3, 0])
        layers = range(config.decoder_layers)
        return dict(
            input_ids=torch.randint(3, config.vocab_size, (batch, new)),
            attention_mask=attention_mask,
            encoder_attention_mask=encoder_attention_mask,
            request_rows=request_rows,
            row_slots=row_slots,
            past_key_values=tuple(kv(batch, past) for _ in layers for _ in range(2)),
            cross_key_values=tuple(kv(requests, enc_seq) for _ in layers for _ in range(2)),
        )


# Graph file stem -> (module, optimum config), in export order.
GRAPHS = {
    "encoder": (EncoderGraph, EncoderOnnxConfig),
    "decoder": (DecoderGraph, DecoderOnnxConfig),
}
