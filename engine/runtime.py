"""ONNX Runtime sessions over an artifacts folder, configured in this one place.

Inputs and outputs are torch tensors on the engine's device bound through IO binding, on the CPU
provider as on CUDA: the KV cache and cross-attention K/V stay where they are between steps. Per
step only the new token ids go in; processors and search run on the logits where they are.
"""

import contextlib

import numpy as np
import onnxruntime as ort
import torch

from ledserve.engine.artifacts import Artifacts
from ledserve.engine.errors import ArtifactError
from ledserve.engine.kv_cache import KVCache
from ledserve.providers import PROVIDERS, provider_name

NUMPY_TYPE = {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in PROVIDERS:
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return device


def session_options(profile: str | None = None) -> ort.SessionOptions:
    """The engine's ONNX Runtime options (every session, every task). `profile`: a file prefix;
    ONNX Runtime then profiles every run (`session.end_profiling()` writes the JSON trace)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Between runs the engine's own torch work (processors, search, cache) needs the cores:
    # ONNX Runtime's threads spinning after a run made each small torch op take ~6 ms.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The memory pattern is planned per input shape and grows the arena again at a length's
    # second run: without arena shrinkage, two 8k-token inputs took RSS 2.94 -> 3.12 GiB with
    # it, 3.02 -> 3.03 GiB without (benchmarks/RESULTS.md, "CPU fast path"; 4.0 -> 6.0 GiB
    # with the earlier attention graph); runs were not slower without it.
    options.enable_mem_pattern = False
    if profile is not None:
        options.enable_profiling, options.profile_file_prefix = True, profile
    return options


@contextlib.contextmanager
def one_host_thread(active: bool):
    """While inside (when `active`), the calling thread's torch work runs on one thread.

    For the engine's work between CPU decoder runs (token choice over [rows, vocab] logits,
    cache gathers): torch's OpenMP workers spin for a while after each parallel op (libgomp's
    default wait policy) and take the cores from the ONNX Runtime run that follows. Not for
    sampling rows, whose vocabulary sorts gain more from torch's threads than the spinning costs
    (benchmarks/RESULTS.md, "torch's threads beside ONNX Runtime"). torch.set_num_threads also
    sets the count that threads started meanwhile take; the previous count is put back."""
    before = torch.get_num_threads()
    if not active or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def open_session(path, device: str, options: ort.SessionOptions) -> ort.InferenceSession:
    """A session on the device's provider; one that does not start is an ArtifactError, never a
    silent fallback to another provider."""
    try:
        session = ort.InferenceSession(str(path), options, providers=PROVIDERS[device])
    except Exception as e:  # onnxruntime raises its own exception types
        raise ArtifactError(f"onnxruntime could not load {path}: {e}") from e
    if session.get_providers()[0] != provider_name(device):
        raise ArtifactError(f"{provider_name(device)} did not start for {path}")
    return session


class Runtime:
    def __init__(self, artifacts: Artifacts, device: str = "cpu", profile: str | None = None):
        """`profile`: see session_options."""
        self.artifacts = artifacts
        self.device_name = device
        self.device = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
        options = session_options(profile)
        self.encoder = open_session(artifacts.graph("encoder"), device, options)
        self.decoder = open_session(artifacts.graph("decoder"), device, options)
        model = artifacts.manifest.model
        self.layers, self.heads = model.decoder_layers, model.decoder_attention_heads
        self.head_dim, self.vocab = model.head_dim, model.vocab_size
        kinds = ("past_key", "past_value", "present_key", "present_value", "cross_key",
                 "cross_value")  # fmt: skip
        self.names = {k: [artifacts.tensor_name(k, i) for i in range(self.layers)] for k in kinds}
        past = self.names["past_key"][0]
        past_type = next(i.type for i in self.decoder.get_inputs() if i.name == past)
        self.float_type = torch.float16 if past_type == "tensor(float16)" else torch.float32
        # Made once: ONNX Runtime's Python IOBinding.bind_* builds this device object at every
        # call (10 us of a bind's 11 on this CPU; a LED-base step binds 42 tensors).
        device = ort.OrtDevice.make(self.device.type, self.device.index or 0)
        self._ort_device = device._get_c_device()

    def _bind(self, binding, name: str, tensor: torch.Tensor, output: bool = False):
        """Bind a contiguous torch tensor by pointer (it must outlive the run), through the
        binding's C object (what IOBinding.bind_input / bind_output call, less their
        bookkeeping for captured graphs, which the engine does not use)."""
        if not tensor.is_contiguous():  # a pointer to a strided view would read garbage
            raise ValueError(f"{name}: a non-contiguous tensor cannot be bound")
        c = binding._iobinding
        bind = c.bind_output if output else c.bind_input
        shape, pointer = list(tensor.shape), tensor.data_ptr()
        bind(name, self._ort_device, NUMPY_TYPE[tensor.dtype], shape, pointer)

    def _run(self, session, binding, shrink: bool = False):
        """`shrink`: afterwards, ONNX Runtime's arena returns the memory this run's intermediate
        tensors took to the system (after an unusually large input)."""
        if self.device.type == "cuda":
            # Inputs written by torch on this thread's stream; not a device-wide synchronize,
            # which would also wait for the encoder thread's runs.
            torch.cuda.current_stream(self.device).synchronize()
        options = None
        if shrink:
            options = ort.RunOptions()
            arena = "gpu:0" if self.device.type == "cuda" else "cpu:0"
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arena)
        session.run_with_iobinding(binding, options)
        binding.synchronize_outputs()

    def _tensor(self, array) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(array), device=self.device)

    def empty_cache(self, rows: int) -> KVCache:
        return KVCache.empty(
            rows, self.layers, self.heads, self.head_dim, self.float_type, self.device
        )

    def encode(self, input_ids, attention_mask, global_attention_mask,
               shrink: bool = False) -> list[list[torch.Tensor]]:  # fmt: skip
        """[batch, seq] int64 arrays -> per row, the cross K/V of every layer (key, value, ...),
        each [1, heads, own_length, head_dim] on the device (padding beyond a row is dropped).
        `shrink`: return the run's intermediate memory to the system afterwards."""
        binding = self.encoder.io_binding()
        inputs = [self._tensor(a) for a in (input_ids, attention_mask, global_attention_mask)]
        for name, tensor in zip(
            ("input_ids", "attention_mask", "global_attention_mask"), inputs, strict=True
        ):
            self._bind(binding, name, tensor)
        batch, seq = input_ids.shape
        keys, values = self.names["cross_key"], self.names["cross_value"]
        names = [n for i in range(self.layers) for n in (keys[i], values[i])]  # key, value, ...
        shape = (batch, self.heads, seq, self.head_dim)
        outputs = [torch.empty(shape, dtype=self.float_type, device=self.device) for _ in names]
        for name, tensor in zip(names, outputs, strict=True):
            self._bind(binding, name, tensor, output=True)
        self._run(self.encoder, binding, shrink)
        if batch == 1:  # the outputs are the row's own tensors: no copy
            return [outputs]
        lengths = attention_mask.sum(axis=1).tolist()
        return [
            [out[row : row + 1, :, : lengths[row]].clone() for out in outputs]
            for row in range(batch)
        ]

    def decode(
        self,
        tokens,
        cache: KVCache,
        encoder_mask: torch.Tensor,
        cross: list[torch.Tensor],
        request_rows: torch.Tensor,
        row_slots: torch.Tensor,
        new_mask=None,
    ):
        """tokens [batch] (host) fed after `cache`, over the cross K/V of request slots
        (encoder_mask [slots, length], cross per layer key, value) with the rows each slot's
        request owns (request_rows [slots, width], row_slots [batch]; see export/graphs.py)
        -> (logits [batch, vocab], present), on the device. Several tokens per row: tokens
        [batch, new] and new_mask [batch, new] (host; 0 for a row's padding after its own
        tokens, which become empty cache slots) -> logits [batch, new, vocab]."""
        ids = np.asarray(tokens, np.int64)
        single = ids.ndim == 1
        ids = ids[:, None] if single else ids
        rows, new = ids.shape
        added = (
            torch.ones((rows, 1), dtype=torch.int64, device=self.device)
            if new_mask is None
            else self._tensor(np.asarray(new_mask, np.int64))
        )
        mask = torch.cat([cache.mask, added], 1)  # [rows, past + new]
        binding = self.decoder.io_binding()
        inputs = {
            "input_ids": self._tensor(ids),
            "attention_mask": mask,
            "encoder_attention_mask": encoder_mask,
            "request_rows": request_rows,
            "row_slots": row_slots,
        }
        names = self.names
        for i in range(self.layers):
            inputs[names["past_key"][i]] = cache.keys[i].contiguous()
            inputs[names["past_value"][i]] = cache.values[i].contiguous()
            inputs[names["cross_key"][i]] = cross[2 * i]
            inputs[names["cross_value"][i]] = cross[2 * i + 1]
        for name, tensor in inputs.items():
            self._bind(binding, name, tensor)
        logits = torch.empty((rows, new, self.vocab), dtype=torch.float32, device=self.device)
        self._bind(binding, "logits", logits, output=True)
        shape = (rows, self.heads, cache.length + new, self.head_dim)
        keys = [
            torch.empty(shape, dtype=self.float_type, device=self.device)
            for _ in range(self.layers)
        ]
        values = [
            torch.empty(shape, dtype=self.float_type, device=self.device)
            for _ in range(self.layers)
        ]
        for i in range(self.layers):
            self._bind(binding, names["present_key"][i], keys[i], output=True)
            self._bind(binding, names["present_value"][i], values[i], output=True)
        self._run(self.decoder, binding)
        return (logits[:, 0] if single else logits), KVCache(keys, values, mask)
