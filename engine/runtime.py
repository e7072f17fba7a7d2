"""ONNX Runtime sessions over an artifacts folder, configured in this one place.

`encode` runs encoder.onnx once for a batch of requests; `decode` runs one decoder step for a
batch of rows grouped per request (see README, "Graph interfaces").
"""

import numpy as np
import onnxruntime as ort

from engine.artifacts import Artifacts
from engine.errors import ArtifactError
from engine.kv_cache import KVCache

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider"]}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    if device not in PROVIDERS:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


class Runtime:
    def __init__(self, artifacts: Artifacts, device: str = "cpu"):
        self.artifacts = artifacts
        self.device = device
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.encoder = self._session(artifacts.graph("encoder"), options)
        self.decoder = self._session(artifacts.graph("decoder"), options)
        model = artifacts.model
        self.layers, self.heads = model["decoder_layers"], model["decoder_attention_heads"]
        self.head_dim = model["head_dim"]
        past = artifacts.tensor_name("past_key", 0)
        past_type = next(i.type for i in self.decoder.get_inputs() if i.name == past)
        self.float_type = np.float16 if past_type == "tensor(float16)" else np.float32
        self.decoder_outputs = [o.name for o in self.decoder.get_outputs()]

    def _session(self, path, options) -> ort.InferenceSession:
        try:
            session = ort.InferenceSession(str(path), options, providers=PROVIDERS[self.device])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ArtifactError(f"onnxruntime could not load {path}: {e}") from e
        if session.get_providers()[0] != PROVIDERS[self.device][0]:
            raise ArtifactError(f"{PROVIDERS[self.device][0]} did not start for {path}")
        return session

    def empty_cache(self, rows: int) -> KVCache:
        return KVCache.empty(rows, self.layers, self.heads, self.head_dim, self.float_type)

    def encode(self, input_ids, attention_mask, global_attention_mask) -> list[list[np.ndarray]]:
        """[batch, seq] int64 inputs -> per row, the cross K/V of every layer (key, value, ...),
        each [1, heads, own_length, head_dim]: padding beyond a row's length is dropped."""
        feed = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "global_attention_mask": global_attention_mask,
        }
        kinds = ("cross_key", "cross_value")
        names = [self.artifacts.tensor_name(kind, i) for i in range(self.layers) for kind in kinds]
        outputs = dict(zip(names, self.encoder.run(names, feed), strict=True))
        lengths = attention_mask.sum(axis=1)
        return [
            [outputs[name][row : row + 1, :, : lengths[row]] for name in names]
            for row in range(input_ids.shape[0])
        ]

    def decode(self, tokens, cache: KVCache, encoder_mask, cross: list[np.ndarray]):
        """tokens [batch] fed after `cache` -> (logits [batch, vocab], present KVCache)."""
        mask = np.concatenate([cache.mask, np.ones((cache.rows, 1), np.int64)], axis=1)
        feed = {
            "input_ids": tokens[:, None],
            "attention_mask": mask,
            "encoder_attention_mask": encoder_mask,
        }
        for i in range(self.layers):
            feed[self.artifacts.tensor_name("past_key", i)] = cache.keys[i]
            feed[self.artifacts.tensor_name("past_value", i)] = cache.values[i]
            feed[self.artifacts.tensor_name("cross_key", i)] = cross[2 * i]
            feed[self.artifacts.tensor_name("cross_value", i)] = cross[2 * i + 1]
        out = dict(zip(self.decoder_outputs, self.decoder.run(None, feed), strict=True))
        keys = [out[self.artifacts.tensor_name("present_key", i)] for i in range(self.layers)]
        values = [out[self.artifacts.tensor_name("present_value", i)] for i in range(self.layers)]
        return out["logits"][:, -1], KVCache(keys, values, mask)
