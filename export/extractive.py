"""The extractive question-answering graph: a Longformer with a span head
(`LongformerForQuestionAnswering`), traceable for any batch, length and global pattern.

Longformer's self-attention is the one LED's encoder copies, so the same export-friendly
rewrite (export/attention.py) replaces it; embeddings, layer norms, feed-forward layers and the
span head are the transformers modules themselves.
"""

from collections import OrderedDict

import torch
from optimum.exporters.onnx import OnnxConfig
from optimum.utils import NormalizedTextConfig
from torch import nn

from ledserve.export.attention import global_slots, local_blocks, longformer_self_attention


class QAGraph(nn.Module):
    """input_ids, attention_mask, global_attention_mask [batch, seq] int64 -> start_logits,
    end_logits [batch, seq] float32, equal to transformers' for every position that is not
    padding (padding positions hold junk, as transformers' own)."""

    def __init__(self, model):
        super().__init__()
        self.config = model.config
        self.longformer = model.longformer
        self.qa_outputs = model.qa_outputs

    def forward(self, input_ids, attention_mask, global_attention_mask):
        embeddings = self.longformer.embeddings
        is_pad = attention_mask == 0
        is_global = (global_attention_mask != 0) & ~is_pad  # padding is never global
        slots = global_slots(is_global)

        # RoBERTa positions: a token's count among the non-pad ids, after the padding index.
        pad_id = embeddings.padding_idx
        not_pad_id = (input_ids != pad_id).long()
        positions = not_pad_id.cumsum(dim=1) * not_pad_id + pad_id  # [batch, seq]
        hidden = (
            embeddings.word_embeddings(input_ids)
            + embeddings.position_embeddings(positions)
            + embeddings.token_type_embeddings.weight[0]  # the tokenizer gives no type ids
        )
        hidden = embeddings.LayerNorm(hidden)  # [batch, seq, hidden]
        layouts = {}  # window -> local_blocks, shared by the layers with that window
        for layer in self.longformer.encoder.layer:
            attn = layer.attention.self
            window = attn.one_sided_attn_window_size
            if window not in layouts:
                layouts[window] = local_blocks(is_pad, is_global, slots, window, hidden.dtype)
            attended = longformer_self_attention(
                attn, hidden, is_pad, is_global, slots, layouts[window]
            )
            hidden = layer.attention.output(attended, hidden)  # dense, residual, layer norm
            hidden = layer.output(layer.intermediate(hidden), hidden)
        start, end = self.qa_outputs(hidden).float().unbind(dim=-1)
        return start, end


class QAOnnxConfig(OnnxConfig):
    """Signature for optimum's exporter: dynamic batch and sequence, dummy inputs for tracing."""

    NORMALIZED_CONFIG_CLASS = NormalizedTextConfig
    DEFAULT_ONNX_OPSET = 17
    FP32_OUTPUTS = ("start_logits", "end_logits")  # stay fp32 in fp16 artifacts

    @property
    def inputs(self):
        axes = {0: "batch", 1: "sequence"}
        return OrderedDict(
            (n, axes) for n in ("input_ids", "attention_mask", "global_attention_mask")
        )

    @property
    def outputs(self):
        axes = {0: "batch", 1: "sequence"}
        return OrderedDict((n, axes) for n in ("start_logits", "end_logits"))

    def generate_dummy_inputs(self, framework="pt", **kwargs):
        # Traced at a length that is no multiple of any window, with padding and a global prefix
        # of different lengths; nothing in the graph branches on these values.
        config = self._config
        window = config.attention_window
        window = max(window) if isinstance(window, (list, tuple)) else window
        batch, seq = 2, 3 * (window // 2) + 5
        input_ids = torch.randint(3, config.vocab_size, (batch, seq))
        attention_mask = torch.ones(batch, seq, dtype=torch.int64)
        attention_mask[1, seq - 3 :] = 0
        input_ids[1, seq - 3 :] = config.pad_token_id
        global_attention_mask = torch.zeros(batch, seq, dtype=torch.int64)
        global_attention_mask[0, :4] = 1
        global_attention_mask[1, :2] = 1
        return dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            global_attention_mask=global_attention_mask,
        )


GRAPHS = {"qa": (QAGraph, QAOnnxConfig)}
